"""Checkpoints that fit a disk (marco_train/train/common.py): rotation only ever deletes behind a newer complete
checkpoint, and a finished stage's checkpoints lose their optimizer state unless training.keep_optimizer_state."""

from __future__ import annotations

from pathlib import Path

from marco_train.train.common import COMPLETE_MARKER, finish_checkpoints, last_checkpoint, rotate_checkpoints

STATE = ("model.safetensors", "trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth",
         "rng_state_1.pth", "training_args.bin", "global_step4/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
         "global_step4/zero_pp_rank_0_mp_rank_00_model_states.pt")


def make(out: Path, step: int, complete: bool = True) -> Path:
    d = out / "checkpoints" / f"checkpoint-{step}"
    for name in STATE:
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(b"x" * 10)
    if complete:
        (d / COMPLETE_MARKER).write_text(f"{step}\n")
    return d


def names(out: Path):
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def test_rotation_keeps_the_newest_complete_checkpoints_and_never_deletes_the_last_one(tmp_path):
    make(tmp_path, 2)
    make(tmp_path, 4, complete=False)  # killed mid-save: the Trainer wrote it, COMPLETE never came
    assert rotate_checkpoints(tmp_path, keep=1) == []  # checkpoint-2 is still the one to resume from
    assert last_checkpoint(tmp_path).endswith("checkpoint-2")
    make(tmp_path, 4)
    make(tmp_path, 6, complete=False)  # being written right now
    assert [p.name for p in rotate_checkpoints(tmp_path, keep=1)] == ["checkpoint-2"]
    assert names(tmp_path) == ["checkpoint-4", "checkpoint-6"]
    make(tmp_path, 6)
    make(tmp_path, 8)
    assert rotate_checkpoints(tmp_path, keep=0) == []  # 0 keeps all
    assert [p.name for p in rotate_checkpoints(tmp_path, keep=2)] == ["checkpoint-4"]
    assert names(tmp_path) == ["checkpoint-6", "checkpoint-8"]


def test_a_finished_stage_keeps_weights_not_optimizer_state(tmp_path):
    make(tmp_path, 4)
    freed = finish_checkpoints(tmp_path)
    left = sorted(str(p.relative_to(tmp_path / "checkpoints" / "checkpoint-4"))
                  for p in (tmp_path / "checkpoints" / "checkpoint-4").rglob("*") if p.is_file())
    assert left == ["global_step4/zero_pp_rank_0_mp_rank_00_model_states.pt", "model.safetensors",
                    "trainer_state.json"]
    assert freed == 6 * 10 and last_checkpoint(tmp_path) is None  # stripped: no longer offered for resuming

    no_weights = tmp_path / "zero3_not_gathered"  # DeepSpeed's partitions are this checkpoint's only weights
    (make(no_weights, 4) / "model.safetensors").unlink()
    finish_checkpoints(no_weights)
    left = sorted(p.name for p in (no_weights / "checkpoints" / "checkpoint-4").rglob("*.pt"))
    assert left == ["bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"]

    kept = tmp_path / "kept"
    make(kept, 4)
    assert finish_checkpoints(kept, keep_optimizer_state=True) == 0
    assert (kept / "checkpoints" / "checkpoint-4" / "optimizer.pt").exists()
    assert last_checkpoint(kept).endswith("checkpoint-4")
