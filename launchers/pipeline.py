"""Entry point: see `marco_train.cli`.

Usage: `python launchers/pipeline.py --config configs/demo.yaml [key=value ...]`.
"""

from marco_train.cli import pipeline_main

if __name__ == "__main__":
    pipeline_main()
