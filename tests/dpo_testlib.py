"""Helpers for the dpo tests: hand-built toy pairs, tiny random models, and a plain log-prob/loss computation.

The plain computation (full logits for every position of one unpadded sequence, `log_softmax`, explicit sums)
is deliberately the naive one the stage's chunked, scored-positions-only code must agree with.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from marco_train.prompts import prompt_ids, render_response, response_ids
from marco_train.tasks import get_task, load_problems_file
from marco_train.tasks.toy import steps_of

TRAIN_PROBLEMS = "mcts_data/problems/toy_train.jsonl"


def common_prefix_len(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def toy_response(question: str, wrong_from: int | None = None, offset: int = 1) -> str:
    """A tagged toy solution; from step `wrong_from` on the results are off by `offset` (a wrong path)."""
    steps = steps_of(question)
    segments = [("sub_task", f"Firstly, I need to break down this task. There are {len(steps)} steps.")]
    shift = 0
    for i, (a, op, b, result) in enumerate(steps):
        if wrong_from is not None and i == wrong_from:
            shift = offset
        shown_a = a if i == 0 else a + shift if wrong_from is not None and i > wrong_from else a
        segments.append(("thinking", f"{shown_a} {op} {b} = {result + shift}"))
    final = steps[-1][3] + shift
    segments.append(("double_check", f"Check: the result is {final}. Correct."))
    segments.append(("answer", f"The answer is: {final}"))
    return render_response(segments)


def toy_pairs(tokenizer, n: int, seed: int = 0, task: str = "toy"):
    """n pair rows in the split stage's schema: chosen correct, rejected wrong from a random step on."""
    rng = random.Random(seed)
    problems = load_problems_file(TRAIN_PROBLEMS, limit=n)
    t = get_task(task)
    rows = []
    for i, p in enumerate(problems):
        steps = steps_of(p.question)
        chosen = toy_response(p.question)
        rejected = toy_response(p.question, wrong_from=rng.randrange(len(steps)), offset=rng.choice([1, 2, -1]))
        prompt = prompt_ids(tokenizer, t, p.question)
        c, r = response_ids(tokenizer, chosen), response_ids(tokenizer, rejected)
        rows.append({"id": f"pair-{i}", "problem_id": p.id, "question": p.question, "chosen": chosen,
                     "rejected": rejected, "shared_prefix_len": common_prefix_len(prompt + c, prompt + r) - len(prompt),
                     "chosen_tokens": len(c), "rejected_tokens": len(r)})
    return rows


def save_pairs(rows, directory: Path) -> Path:
    from datasets import Dataset

    path = Path(directory) / "pairs"
    Dataset.from_list(rows).save_to_disk(str(path))
    return path


def tiny_model(tokenizer, seed: int = 0, hidden_size: int = 32, layers: int = 2, heads: int = 2, attn="sdpa"):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, intermediate_size=hidden_size * 2,
                      max_position_embeddings=1024, tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, attn_implementation=attn)
    return Qwen2ForCausalLM(cfg)


def save_model(model, tokenizer, directory: Path) -> Path:
    path = Path(directory) / "model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def plain_segment_logps(model, example):
    """(chosen prefix, chosen suffix, rejected prefix, rejected suffix) sums via full logits of each sequence."""
    import torch

    out = []
    with torch.no_grad():
        for key in ("chosen_ids", "rejected_ids"):
            ids = example["prompt_ids"] + example["prefix_ids"] + example[key]
            logits = model(torch.tensor([ids])).logits[0].double()
            lp = torch.log_softmax(logits, -1)[:-1].gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
            start, k = len(example["prompt_ids"]), len(example["prefix_ids"])
            out += [lp[start - 1:start - 1 + k].sum().item(), lp[start - 1 + k:].sum().item()]
    return out


def plain_loss(policy, reference, counts, beta=0.1, epsilon=0.1, alpha=1.0, masked=True, reduction="sum"):
    """Per-pair (dpo, sft) from segment sums, written out with math (independent of marco_train.train.losses)."""
    def lp(s, c, side):
        pre, suf = s[2 * side], s[2 * side + 1]
        total = suf if masked else pre + suf
        n = c[2 * side + 1] if masked else c[2 * side] + c[2 * side + 1]
        return total / n if reduction == "mean" else total

    dpo, sft = [], []
    for pol, ref, c in zip(policy, reference, counts):
        d = beta * ((lp(pol, c, 0) - lp(ref, c, 0)) - (lp(pol, c, 1) - lp(ref, c, 1)))
        dpo.append(-(1 - epsilon) * math.log(1 / (1 + math.exp(-d))) - epsilon * math.log(1 / (1 + math.exp(d))))
        sft.append(-(pol[1] if masked else pol[0] + pol[1]) / (c[1] if masked else c[0] + c[1]))
    return dpo, sft


def read_metrics(stage_dir: Path, key: str = "loss/dpo"):
    """The training log lines of a stage's metrics.jsonl (those with `key`; not the end-of-training summary)."""
    lines = (Path(stage_dir) / "metrics.jsonl").read_text().splitlines()
    return [m for m in (json.loads(line) for line in lines if line.strip()) if key in m]


def examples_with_reference(tokenizer, n: int, seed: int = 0, model=None):
    """Tokenized toy pairs with a cached reference column (the segment sums of `model`, unshared layout)."""
    from marco_train.train.dpo_data import PairCollator, tokenize_pairs
    from marco_train.train.logprobs import segment_sums_table

    examples = tokenize_pairs(toy_pairs(tokenizer, n, seed=seed), tokenizer, get_task("toy"), 4096)[0]
    if model is not None:
        table = segment_sums_table(model.eval(), [PairCollator(tokenizer.pad_token_id)(examples)])
        examples = [dict(e, ref_logps=table[e["pair_index"]]) for e in examples]
    return examples


def dpo_trainer(model, examples, out_dir, pad_token_id, shared=True, packed=True, budget=256, pairs=2,
                global_batch=8, steps=1, lr=1.0, loss=None, load=None, **args):
    """FineGrainedDPOTrainer with plain SGD (the update is lr x gradient), no clipping, the stage's batching.
    `load` (instead of `model`) loads the model after the arguments exist (ZeRO-3 partitions it at load)."""
    from datasets import Dataset
    from transformers import TrainingArguments

    from marco_train.train.dpo_data import PairCollator
    from marco_train.train.dpo_trainer import FineGrainedDPOTrainer
    from marco_train.train.losses import LossConfig

    arguments = dict(output_dir=str(out_dir), per_device_train_batch_size=1, gradient_accumulation_steps=1,
                     learning_rate=lr, optim="sgd", lr_scheduler_type="constant", max_steps=steps, max_grad_norm=0.0,
                     logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, data_seed=0,
                     remove_unused_columns=False, disable_tqdm=True, **args)
    collator = PairCollator(pad_token_id, shared, score_prefix=True, packed=packed)
    arguments = TrainingArguments(**arguments)
    model = load() if load is not None else model
    return FineGrainedDPOTrainer(model=model, args=arguments, train_dataset=Dataset.from_list(
        examples), data_collator=collator, loss_config=loss or LossConfig(mask_prefix=False, mask_sft_prefix=False),
        global_batch_size=global_batch, micro_tokens=budget if packed else None, micro_pairs=None if packed else pairs)
