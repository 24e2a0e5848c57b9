"""The pieces of benchmarks/dpo_throughput.py: pair sources, the model, the trainers, token accounting.

Pair sources: the fixed shapes (prompt, shared prefix, divergent tokens per side), `real` (the demo's split at
1,024 searched problems before its step checker: benchmarks/data/demo_split_1024_lengths.json holds each pair's
four lengths; token ids are drawn at random with exactly those lengths), or a split stage directory (its pairs
tokenized with the toy tokenizer, real token ids).

Implementations: TRL 1.16's DPOTrainer in its fastest equivalent setup (TRL's `padding_free` is disabled in 1.16:
it warns and pads), and ours in the four layouts of the support matrix: padded (neither), shared (one padded
tree row per pair), packed (the pairs' sequences back to back, the flash-attention layout), packed_shared (both:
the default on sdpa, eager and flex_attention).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # this checkout's package, also in the parent process (children get PYTHONPATH)
    sys.path.insert(0, str(REPO))
SHAPES = {"long": (64, 192, 32), "short": (64, 16, 32)}  # prompt, shared prefix, divergent tokens per side
REAL = REPO / "benchmarks" / "data" / "demo_split_1024_lengths.json"
LAYOUTS = {"ours_padded": (False, False), "ours_shared": (True, False), "ours_packed": (False, True),
           "ours_packed_shared": (True, True)}
IMPLS = ("trl", *LAYOUTS)
MODEL = dict(vocab_size=8192, hidden_size=256, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=768, max_position_embeddings=2048, tie_word_embeddings=True)
BETA, LR, EOS = 0.1, 1e-4, 2


def real_lengths():
    return json.loads(REAL.read_text())


def make_pairs(source: str, n: int, seed: int = 0):
    """n pairs (fixed shapes), or every pair of the real distribution (n ignored) as token-id dicts."""
    import torch

    if source not in SHAPES and source != "real":  # a split stage directory: its real pairs
        from marco_train.data.schema import load_pairs
        from marco_train.models import load_tokenizer
        from marco_train.tasks import get_task
        from marco_train.train.dpo_data import tokenize_pairs

        task = json.loads((Path(source) / "summary.json").read_text())["task"]
        tokenizer = load_tokenizer(REPO / "marco_train/toy/checkpoint")
        return tokenize_pairs(load_pairs(Path(source) / "pairs"), tokenizer, get_task(task), 4096)[0]
    shapes = [SHAPES[source][:2] + (SHAPES[source][2],) * 2] * n if source in SHAPES else real_lengths()["pairs"]
    g = torch.Generator().manual_seed(seed)
    draw = lambda k: torch.randint(3, MODEL["vocab_size"], (k,), generator=g).tolist()  # noqa: E731
    pairs = []
    for i, (prompt, shared, chosen_len, rejected_len) in enumerate(shapes):
        chosen, rejected = draw(chosen_len - 1) + [EOS], draw(rejected_len - 1) + [EOS]
        if rejected_len == 1:  # the rejected suffix is eos alone: the chosen one must not start with it
            chosen[0] = 3 if chosen[0] == EOS else chosen[0]
        else:
            rejected[0] = chosen[0] + 1 if chosen[0] + 1 < MODEL["vocab_size"] else 3  # they diverge at once
        pairs.append({"pair_index": i, "prompt_ids": draw(prompt), "prefix_ids": draw(shared), "chosen_ids": chosen,
                      "rejected_ids": rejected})
    return pairs


def unique_tokens(pair) -> int:
    """Prompt + shared prefix + both suffixes, each counted once (also what TRL's dataset rows hold)."""
    return sum(len(pair[k]) for k in ("prompt_ids", "prefix_ids", "chosen_ids", "rejected_ids"))


def make_config(attn: str = "sdpa"):
    from transformers import Qwen2Config

    config = Qwen2Config(**MODEL, pad_token_id=0, eos_token_id=EOS)
    config._attn_implementation = attn
    return config


def make_model(device: str = "cpu", attn: str = "sdpa", seed: int = 0):
    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(make_config(attn)).to(device)


def common_args(args, out_dir: str) -> dict:
    return dict(output_dir=out_dir, gradient_accumulation_steps=1, learning_rate=LR, max_steps=args.warmup + args.steps,
                logging_steps=1, save_strategy="no", report_to=[], seed=0, data_seed=0, bf16=args.dtype == "bf16",
                gradient_checkpointing=False, use_cpu=args.device == "cpu", dataloader_num_workers=0,
                disable_tqdm=True, remove_unused_columns=False, lr_scheduler_type="constant")


def step_order(pairs, per_step: int):
    """The pairs in the order our trainer takes them (dpo_batching.step_pairs, seed 0, epoch 0): TRL gets them in
    that order too (sequentially), so every implementation sees the same pairs at every step."""
    from marco_train.train.dpo_batching import step_pairs

    return [pairs[i] for step in step_pairs(len(pairs), per_step, 0, 0) for i in step]


def build_trl(args, pairs, out_dir):
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from trl import DPOConfig, DPOTrainer

    from marco_train.models import load_tokenizer

    class PreTokenizedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, *a, **k):  # the pairs are token ids already
            return dataset

        def _get_train_sampler(self, *a, **k):
            return SequentialSampler(self.train_dataset)

    rows = [{"prompt_ids": p["prompt_ids"] + p["prefix_ids"], "chosen_ids": p["chosen_ids"],
             "rejected_ids": p["rejected_ids"]} for p in step_order(pairs, args.pairs)]
    config = DPOConfig(**common_args(args, out_dir), per_device_train_batch_size=args.pairs, beta=BETA,
                       loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0], precompute_ref_log_probs=True,
                       precompute_ref_batch_size=args.pairs, max_length=None)
    attn = args.attn if args.attn in ("sdpa", "eager", "flash_attention_2") else "sdpa"  # TRL on flex: not set up
    return PreTokenizedDPOTrainer(model=make_model(args.device, attn), args=config,
                                  train_dataset=Dataset.from_list(rows),
                                  processing_class=load_tokenizer(REPO / "marco_train/toy/checkpoint"))


def build_ours(args, pairs, out_dir, impl: str):
    from datasets import Dataset
    from transformers import TrainingArguments

    from marco_train.train.dpo_data import PairCollator
    from marco_train.train.dpo_trainer import FineGrainedDPOTrainer
    from marco_train.train.logprobs import segment_sums_table
    from marco_train.train.losses import LossConfig

    shared, packed = LAYOUTS[impl]
    model = make_model(args.device, args.attn)
    collate = PairCollator(0, shared=shared, packed=packed)
    batches = ({k: v.to(args.device) for k, v in collate(pairs[i:i + args.pairs]).items()}
               for i in range(0, len(pairs), args.pairs))
    table = segment_sums_table(model.eval(), batches)
    examples = [dict(p, ref_logps=table[p["pair_index"]]) for p in pairs]
    loss = LossConfig(beta=BETA, epsilon=0.0, alpha=1.0, mask_prefix=True, mask_sft_prefix=True, logp_reduction="sum")
    return FineGrainedDPOTrainer(
        model=model, args=TrainingArguments(**common_args(args, out_dir), per_device_train_batch_size=1),
        train_dataset=Dataset.from_list(examples), data_collator=PairCollator(0, shared, False, packed),
        loss_config=loss, global_batch_size=args.pairs, micro_tokens=args.tokens if packed else None,
        micro_pairs=None if packed else args.pairs)


def build(args, impl: str, pairs, out_dir):
    return build_trl(args, pairs, out_dir) if impl == "trl" else build_ours(args, pairs, out_dir, impl)


def why_not(args, impl: str):
    """None if this implementation runs with args.attn on args.device, else why not."""
    if args.attn == "flex_attention" and args.device == "cpu":
        return "FlexAttention has no backward on CPU (torch 2.13)"
    if impl == "trl":
        return None
    from marco_train.train.prefix_sharing import decide, decide_packing

    config = make_config(args.attn)
    shared, packed = LAYOUTS[impl]
    for wanted, (ok, why) in ((shared, decide(config)), (packed, decide_packing(config))):
        if wanted and not ok:
            return why
    return None


def count_positions(model):
    """A list that grows by the positions of every forward of `model` (padding included)."""
    fed = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        fed.append(int(ids.numel()) if ids is not None else int(kwargs["inputs_embeds"].shape[:2].numel()))

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return fed


def epoch_ratios(pairs, per_step: int, budget: int) -> dict:
    """computed / unique over one epoch of steps of `per_step` pairs, per layout, from the layouts themselves."""
    from marco_train.train.dpo_batching import plan_step, step_pairs
    from marco_train.train.dpo_data import PairCollator

    steps = step_pairs(len(pairs), per_step, 0, 0)
    unique = sum(unique_tokens(p) for p in pairs)
    out = {}
    for impl, (shared, packed) in LAYOUTS.items():
        collate = PairCollator(0, shared, True, packed)
        fed = 0
        for step in steps:
            members = [pairs[i] for i in step]
            if packed:
                micro = plan_step([collate.tokens(p) for p in members], 1, micro_tokens=budget)[0]
                fed += sum(collate([members[i] for i in m.items])["input_ids"].numel() for m in micro)
            else:
                fed += collate(members)["input_ids"].numel()
        out[impl] = fed / unique
    out["trl"] = out["ours_padded"]  # the same rows: [chosen; rejected], padded to the longest of the batch
    return out


def env(threads: int) -> dict:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false",
                PYTHONPATH=str(REPO))
