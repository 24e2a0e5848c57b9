"""Our console (marco_train/logs.py): timestamped lines with levels from rank 0, warnings from any rank marked with
it, --quiet (warnings and errors only) and --verbose (the libraries as they are), the libraries' noise off by
default, progress as lines with no carriage return when stderr is not a terminal."""

import logging
import re

import pytest

from conftest import pipeline
from marco_train import logs

OURS = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[marco-train\] (DEBUG|INFO|WARNING|ERROR) ")
CONFIG = """experiment: noisy
runs_dir: {runs}
wandb: {{mode: disabled}}
stages:
  noisy: {{kind: probe_stages.noisy, nproc_per_node: 2}}
"""


@pytest.fixture
def fresh_logging(monkeypatch):
    monkeypatch.delenv(logs.LEVEL_ENV, raising=False)
    monkeypatch.delenv("RANK", raising=False)
    yield
    logs.setup("normal")


def test_levels_and_the_format_of_our_lines(fresh_logging, capsys):
    logs.setup("normal")
    logs.info("one")
    logs.debug("hidden")
    logs.warning("two")
    lines = capsys.readouterr().out.splitlines()
    assert [OURS.match(x).group(1) for x in lines] == ["INFO", "WARNING"]
    assert [x.split("] ", 1)[1] for x in lines] == ["INFO one", "WARNING two"]
    logs.setup("quiet")
    logs.info("not shown")
    logs.warning("shown")
    assert [x.split("] ", 1)[1] for x in capsys.readouterr().out.splitlines()] == ["WARNING shown"]
    logs.setup("verbose")
    logs.debug("now shown")
    assert capsys.readouterr().out.endswith("[marco-train] DEBUG now shown\n")


def test_other_ranks_print_warnings_only_marked_with_their_rank(fresh_logging, capsys, monkeypatch):
    logs.setup("normal")
    monkeypatch.setenv("RANK", "3")
    logs.info("rank 0 says this")
    logs.warning("lost a file")
    assert [x.split("] ", 1)[1] for x in capsys.readouterr().out.splitlines()] == ["WARNING rank 3: lost a file"]
    assert isinstance(logs.progress(5, "x"), logs.LineProgress)  # a silent one: it prints nothing
    bar = logs.progress(5, "x")
    bar.update(5)
    bar.close()
    assert capsys.readouterr().out == ""


def test_progress_off_a_terminal_is_lines_without_carriage_returns(fresh_logging, capsys):
    logs.setup("normal")
    bar = logs.progress(4, "mcts: trees", unit="trees")
    assert type(bar) is logs.LineProgress  # pytest's captured stderr is not a terminal
    bar.every = 0.0  # a line on every update (the default is one per PROGRESS_SECONDS)
    for _ in range(3):
        bar.update(1)
    bar.set_postfix(tok_s=120)
    bar.update(1)  # the last: printed by close, not twice
    bar.close()
    bar.close()
    out = capsys.readouterr()
    lines = [x.split("INFO ", 1)[1] for x in out.out.splitlines()]
    assert "\r" not in out.out + out.err and len(lines) == 4
    assert [x.split(" in ")[0] for x in lines] == ["mcts: trees: 1/4 (25%)", "mcts: trees: 2/4 (50%)",
                                                   "mcts: trees: 3/4 (75%)", "mcts: trees: 4/4 (100%)"]
    assert lines[-1].endswith("[tok_s=120]") and "eta" not in lines[-1] and "eta" in lines[0]
    logs.setup("quiet")
    quiet_bar = logs.progress(2, "y")
    quiet_bar.update(2)
    quiet_bar.close()
    assert capsys.readouterr().out == ""


def test_a_bad_level_in_the_environment_is_named(fresh_logging, monkeypatch):
    monkeypatch.setenv(logs.LEVEL_ENV, "loud")
    with pytest.raises(ValueError, match="MARCO_LOG_LEVEL='loud': use one of quiet, normal, verbose"):
        logs.setup(None)
    assert logging.getLogger(logs.LOGGER).propagate is False


def run_noisy(tmp_path, *flags):
    config = tmp_path / "noisy.yaml"
    config.write_text(CONFIG.format(runs=tmp_path / "runs"))
    return pipeline(str(config), flags=["--force", "noisy", *flags])


@pytest.mark.slow
def test_two_ranks_default_quiet_and_verbose(tmp_path):
    """Under torchrun (2 ranks, as the runner starts them): rank 0's line, rank 1's warning marked, the Python and
    the transformers warning once (rank 1's are dropped), no datasets bar, no torchrun OMP banner."""
    normal = run_noisy(tmp_path)
    lines = normal.stdout.splitlines()
    assert all(OURS.match(x) for x in lines), lines
    said = [x.split("] ", 1)[1] for x in lines]
    assert "INFO noisy: hello from rank 0" in said and not any("hello from rank 1" in x for x in said)
    assert "WARNING rank 1: a warning of ours from rank 1" in said
    assert normal.stderr.count("UserWarning: a library's UserWarning") == 1
    assert normal.stderr.count("transformers noise") == 1
    for noise in ("a datasets bar", "OMP_NUM_THREADS", "\r"):
        assert noise not in normal.stdout + normal.stderr, noise

    quiet = run_noisy(tmp_path, "--quiet")
    assert [x.split("] ", 1)[1] for x in quiet.stdout.splitlines()] == ["WARNING rank 1: a warning of ours from rank 1"]
    # the libraries' warnings are warnings: they stay (once); nothing else does
    assert sorted(x.strip().split(": ", 1)[-1] for x in quiet.stderr.splitlines()) == \
        sorted(["UserWarning: a library's UserWarning", 'warnings.warn("a library\'s UserWarning", UserWarning)',
                "[transformers] transformers noise"])

    verbose = run_noisy(tmp_path, "--verbose")  # the libraries as they are: every rank's warnings, the bars
    assert verbose.stderr.count("transformers noise") == 2 and "a datasets bar" in verbose.stderr
    assert verbose.stderr.count("UserWarning: a library's UserWarning") == 2
