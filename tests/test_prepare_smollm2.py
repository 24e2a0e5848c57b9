"""The offline SmolLM2 preparation: a normal HF directory whose tokenizer round-trips and applies its chat template."""

import json
import time

import pytest

from marco_train.prepare import smollm2


@pytest.mark.slow
def test_prepared_directory_round_trips_and_is_idempotent(smollm2_dir, smollm2_tokenizer):
    assert (smollm2_dir / "model.safetensors").exists() and not list(smollm2_dir.glob("*.bin"))
    stamp = json.loads((smollm2_dir / smollm2.STAMP).read_text())
    assert stamp["wheel_sha256"] == smollm2.WHEEL_SHA256
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30

    tok = smollm2_tokenizer
    text = ("Natalia sold 48 clips in April, and then she sold half as many clips in May.\n"
            "<thinking>48 / 2 = 24</thinking>")
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>"

    started = time.time()
    assert smollm2.prepare(log=lambda m: None) == smollm2_dir  # cached: no download, no conversion
    assert time.time() - started < 2
