"""The minimal stage of docs/architecture.md ("Adding a stage") runs as written, through the real planner."""

import json
import os
import re

from conftest import REPO, pipeline

DOC = REPO / "docs" / "architecture.md"


def doc_files() -> dict:
    """{path: text} of the doc's fenced blocks whose first line is `# file: <path>`."""
    blocks = re.findall(r"^```\w*\n# file: (\S+)\n(.*?)^```", DOC.read_text(), re.M | re.S)
    return {path: text for path, text in blocks}


def test_the_minimal_stage_of_the_architecture_doc_runs_and_caches(tmp_path):
    files = doc_files()
    assert sorted(files) == ["count.yaml", "my_stages/count_answers.py"]
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    config, runs = str(tmp_path / "count.yaml"), f"runs_dir={tmp_path / 'runs'}"

    first = pipeline(config, runs, env=env)
    (out,) = (tmp_path / "runs" / "count").glob("answers-*")
    # mcts_data/problems/toy_train.jsonl: 2000 problems; answers 0, 1, 2 are the most common (128, 101, 77)
    assert json.loads((out / "counts.json").read_text()) == {"0": 128, "1": 101, "2": 77}
    assert json.loads((out / "_DONE.json").read_text())["summary"] == {"problems": 2000}
    assert "cached" not in first.stdout + first.stderr

    second = pipeline(config, runs, env=env)
    assert "cached" in second.stdout + second.stderr

    refused = pipeline(config, runs, "stages.answers.top=0", env=env, check=False)
    assert refused.returncode == 2  # at plan time, naming where the bad value came from
    assert refused.stderr == "error: command-line override 'stages.answers.top=0': stages.answers.top=0: must be >= 1\n"
