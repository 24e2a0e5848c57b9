"""A compile of DeepSpeed's CPU shared-memory op killed midway leaves torch's `lock` file in the build directory;
without our guard (train/common.py `_load_cpu_shm_op`) every later ZeRO start on CPU waits on it for ever."""

from __future__ import annotations

import pytest

from conftest import PYTHON, run


@pytest.mark.slow
def test_a_dead_compiles_lock_is_removed_and_the_op_builds(tmp_path):
    build_dir = tmp_path / "deepspeed_shm_comm"  # where torch builds it when TORCH_EXTENSIONS_DIR is set
    build_dir.mkdir()
    (build_dir / "lock").touch()  # what a kill -9 during the compile leaves
    proc = run([PYTHON, "-c", "from marco_train.train.common import _load_cpu_shm_op; _load_cpu_shm_op()"],
               env={"TORCH_EXTENSIONS_DIR": str(tmp_path)}, timeout=300)
    assert f"removing {build_dir / 'lock'}, left by a compile that was killed" in proc.stdout + proc.stderr
    assert not (build_dir / "lock").exists()
    assert (build_dir / "deepspeed_shm_comm.so").is_file()
