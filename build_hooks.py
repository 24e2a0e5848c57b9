"""Build hook (pyproject.toml: [tool.setuptools.cmdclass]): the wheel ships configs/ and mcts_data/.

They stay at the top of the repository, one copy each; `build_py` copies them into the built package as
`marco_train/_shipped/configs/` and `marco_train/_shipped/mcts_data/`, where marco_train/shipped.py finds them
with importlib.resources. An editable install builds nothing (setuptools' editable mode skips the copy), and
shipped.py then reads the top-level directories of the checkout directly, so edits show at once.
"""

import shutil
from pathlib import Path

from setuptools.command.build_py import build_py

SHIPPED = ("configs", "mcts_data")  # marco_train/shipped.py: TOP_LEVEL
TARGET = Path("marco_train", "_shipped")  # marco_train/shipped.py: IN_PACKAGE


class BuildPyWithShippedData(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / TARGET
        shutil.rmtree(target, ignore_errors=True)  # a build/ left from an earlier build holds no stale file
        for name in SHIPPED:
            shutil.copytree(name, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
