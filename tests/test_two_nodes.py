"""Two "nodes" on this machine: two torchrun launches joined by a c10d rendezvous on 127.0.0.1, as on a cluster
(`torchrun --nnodes=2 --nproc_per_node=1 --rdzv_backend=c10d --rdzv_endpoint=127.0.0.1:<port>`; c10d assigns the
node ranks). The mcts stage's shards cover the problems once; the dpo stage's model equals a one-node two-rank
run of the same global batch; a node that stops answering mid-dpo ends the other node's job within
dist_timeout_s + 30 s, with one line naming the lost rank.

The first launch hosts the rendezvous store (it binds the port); the second is the node that is lost.
"""

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import PYTHON, REPO, torchrun
from dpo_testlib import read_metrics
from marco_train.pipeline import DONE_FILE, build_plan, run_plan
from marco_train.tasks import load_problems_file

ENV = {"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
MCTS = ["stages.mcts.num_problems=6", "stages.mcts.max_iterations=4", "stages.mcts.stop_correct=2",
        "stages.mcts.min_iterations=2", "stages.mcts.min_correct=1"]
TWO_NODES = ["stages.{stage}.nnodes=2", "stages.{stage}.nproc_per_node=1"]  # runtime keys: same fingerprint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Node:
    """One torchrun launch (an elastic agent and its worker), in its own session, output to a file."""

    def __init__(self, port: int, log: Path, launcher: str, *args: str):
        env = dict(os.environ, **ENV)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "tests"), env.get("PYTHONPATH")]))
        cmd = [PYTHON, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
               f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=two-nodes", launcher, *args]
        self.log = log
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def output(self) -> str:
        return self.log.read_text()

    def workers(self):
        """The agent's worker processes (torchrun starts each in a session of its own)."""
        found = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in found.split()]

    def signal(self, sig) -> None:
        for pid in [self.proc.pid, *self.workers()]:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"node still running after {timeout} s\n{self.output()[-3000:]}") from None


def two_nodes(tmp_path: Path, launcher: str, *args: str):
    """Node A (the rendezvous host: it binds the port first), then node B."""
    port = free_port()
    a = Node(port, tmp_path / "node_a.log", launcher, *args)
    deadline = time.time() + 60
    while not listening(port):
        assert a.proc.poll() is None and time.time() < deadline, a.output()[-3000:]
        time.sleep(0.2)
    return a, Node(port, tmp_path / "node_b.log", launcher, *args)


@pytest.mark.slow
def test_mcts_on_two_nodes_shards_cover_the_problems_once(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    overrides = [f"runs_dir={tmp_path / 'runs'}", *MCTS]
    plan = build_plan("configs/demo.yaml", overrides)
    run_plan(plan, until="bootstrap")
    nodes = two_nodes(tmp_path, "launchers/mcts.py", "--config", "configs/demo.yaml", *overrides,
                      *[o.format(stage="mcts") for o in TWO_NODES])
    for node in nodes:
        assert node.wait(600) == 0, node.output()[-3000:]
    out = plan.stages["mcts"].out_dir
    shards = {p.name: [json.loads(line)["problem_id"] for line in p.read_text().splitlines()]
              for p in sorted((out / "trees").glob("rank-*.jsonl"))}
    problems = sorted(p.id for p in load_problems_file("mcts_data/problems/toy_train.jsonl")[:6])
    assert set(shards) == {"rank-00000.jsonl", "rank-00001.jsonl"}
    assert sorted(shards["rank-00000.jsonl"]) == problems[0::2] and sorted(shards["rank-00001.jsonl"]) == problems[1::2]
    done = json.loads((out / DONE_FILE).read_text())
    assert done["world_size"] == 2 and done["summary"]["trees"] == 6


def dpo_config(tmp_path: Path, max_steps: int) -> str:
    train = {"global_batch_size": 4, "per_device_batch_size": 1, "learning_rate": 1.0e-2, "max_steps": max_steps,
             "max_length": 512}
    config = {"experiment": "x", "runs_dir": str(tmp_path / "runs"), "seed": 0, "wandb": {"mode": "disabled"},
              "stages": {"upstream": {"kind": "dpo_stages.handmade", "n_pairs": 8},
                         "dpo": {"kind": "dpo", "inputs": {"data": "upstream", "model": "upstream"}, "log_every": 1,
                                 "training": train}}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def prepared(config: str, *overrides: str) -> Path:
    """Run the upstream stage in-process; the dpo stage directory these overrides give."""
    plan = build_plan(config, list(overrides))
    run_plan(plan, until="upstream")
    return plan.stages["dpo"].out_dir


def weights(stage_dir: Path):
    from marco_train.models import load_model

    return dict(load_model(stage_dir / "model").named_parameters())


@pytest.mark.slow
def test_dpo_on_two_nodes_equals_one_node_with_two_ranks(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    config = dpo_config(tmp_path, max_steps=3)
    one_dir = prepared(config, "experiment=one")
    torchrun("launchers/dpo.py", "--config", config, "experiment=one", "stages.dpo.nproc_per_node=2", env=ENV)
    two = ["experiment=two", *[o.format(stage="dpo") for o in TWO_NODES]]
    two_dir = prepared(config, *two)
    for node in two_nodes(tmp_path, "launchers/dpo.py", "--config", config, *two):
        assert node.wait(600) == 0, node.output()[-3000:]

    assert json.loads((two_dir / DONE_FILE).read_text())["world_size"] == 2
    one, two_logged = read_metrics(one_dir), read_metrics(two_dir)
    assert [m["step"] for m in two_logged] == [1, 2, 3] and one[-1]["rewards/margins"] != 0
    for a, b in zip(one, two_logged):
        for name in ("loss", "loss/dpo", "rewards/margins"):
            assert a[name] == pytest.approx(b[name], abs=1e-6), (a["step"], name)
    want, got = weights(one_dir), weights(two_dir)
    assert want.keys() == got.keys()
    for name, p in want.items():
        assert (p - got[name]).abs().max().item() <= 1e-6, name


@pytest.mark.slow
@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_a_node_lost_during_dpo_ends_the_other_within_the_timeout_naming_the_lost_rank(tmp_path, monkeypatch, how):
    """killed (SIGKILL: its sockets close, gloo fails at once) or stopped (SIGSTOP: a node that hangs keeps its
    sockets open, so only the process-group timeout, dist_timeout_s, frees the other; killed for good after)."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    timeout = 20
    run = ["stages.dpo.dist_timeout_s=" + str(timeout), *[o.format(stage="dpo") for o in TWO_NODES]]
    config = dpo_config(tmp_path, max_steps=10_000)
    dpo_dir = prepared(config, *run)
    host, lost = two_nodes(tmp_path, "launchers/dpo.py", "--config", config, *run)
    deadline = time.time() + 300
    while not (dpo_dir / "metrics.jsonl").exists() or not read_metrics(dpo_dir):  # training has started
        assert host.proc.poll() is None and time.time() < deadline, host.output()[-3000:]
        time.sleep(0.5)
    (lost_worker,) = lost.workers()
    lost.signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
    started = time.time()
    try:
        code = host.wait(timeout + 30)
        took = time.time() - started
        print(f"{how}: the rendezvous host exited {took:.1f} s after the other node was lost")
    finally:
        lost.signal(signal.SIGKILL)
        lost.proc.wait()
    out = host.output()
    assert code != 0 and took <= timeout + 30, (code, took)
    (error,) = re.findall(r"error: rank (\d) of 2: lost rank (\d) \(\S+ pid (\d+)\): its heartbeat stopped", out)
    survivor, lost_rank, pid = map(int, error)
    assert lost_rank == 1 - survivor and pid == lost_worker, (error, lost_worker)
    assert not (dpo_dir / DONE_FILE).exists()
