"""The planner imports every stage module (also for --dry-run): none may pull in the heavy libraries.

The rule (marco_train/stages/__init__.py): a stage module's top level imports only light modules; its run()
imports the heavy library modules. Checked in a fresh interpreter, so nothing imported by other tests counts.
"""

import json
import subprocess
import sys

from marco_train.pipeline import STAGE_MODULES

HEAVY = ("torch", "transformers", "trl", "datasets", "peft")


def test_importing_the_planner_and_every_stage_module_loads_no_heavy_library():
    modules = ["marco_train.pipeline", *STAGE_MODULES.values()]
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}:\n"
            "    importlib.import_module(m)\n"
            f"print(json.dumps(sorted(k for k in {HEAVY!r} if k in sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    assert len(modules) == 8  # the planner and the seven stage kinds
