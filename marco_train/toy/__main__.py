"""`python -m marco_train.toy problems`: regenerate the bundled toy problem files (deterministic).

toy_train (seed 0, train side of the hash split), toy_heldout (seed 0, held-out side: only ever evaluated) and
toy_dev (seed 1, held-out side, none of toy_heldout's questions: what every choice is tuned on).
"""

import sys
from pathlib import Path

from ..io import atomic_write_text
from ..tasks.toy import generate

if __name__ == "__main__":
    if sys.argv[1:] != ["problems"]:
        sys.exit("usage: python -m marco_train.toy problems")
    import json

    heldout = generate(0, 500, True)
    files = {"toy_train": generate(0, 2000, False), "toy_heldout": heldout,
             "toy_dev": generate(1, 500, True, prefix="d", exclude=[p.question for p in heldout])}
    for name, problems in files.items():
        path = Path("mcts_data/problems") / f"{name}.jsonl"
        atomic_write_text(path, "".join(json.dumps(p.__dict__) + "\n" for p in problems))
        print(f"wrote {path} ({len(problems)} problems)")
