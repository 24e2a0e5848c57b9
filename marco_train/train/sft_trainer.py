"""The sft stage's pieces: tokenising the SFT set to the prompt contract, the packing guard, TRL's SFTTrainer.

input_ids = the prompt (prompts.row_messages: the task's messages for the row's question, or a user row's own
prompt messages, through the chat template) + prompts.response_ids (response + end-of-turn), completion_mask 0 on
the prompt and 1 on the response; TRL turns that into labels (-100 on the prompt). Over-long rows are refused, not
truncated. `StageSFTTrainer` is TRL's SFTTrainer without its draft model card in checkpoints/ (the stage writes
model/README.md; train/model_card.py).
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from ..config import ConfigError
from ..io import DataError
from ..models import load_model
from ..prompts import chat_prompt_ids, response_ids, row_messages
from .common import our_console, peft_config, training_arguments

# Attention implementations that honour per-sample position ids in packed rows (transformers' own models).
PACKING_ATTENTION = ("flash_attention_2", "flash_attention_3", "sdpa", "eager", "flex_attention")


def tokenize_sft(rows, tokenizer, task, max_length: int, where: str = "sft") -> Dataset:
    """A Dataset of input_ids (prompt + response + end-of-turn) and completion_mask (1 on the response)."""
    input_ids, masks = [], []
    for i, row in enumerate(rows):
        prompt = chat_prompt_ids(tokenizer, row_messages(task, row))
        response = response_ids(tokenizer, row["response"])
        if len(prompt) + len(response) > max_length:
            raise DataError(f"{where}: row {i} (id {row['id']}): {len(prompt) + len(response)} tokens > "
                            f"training.max_length={max_length}; raise training.max_length or set the split stage's "
                            f"max_length to drop longer paths")
        input_ids.append(prompt + response)
        masks.append([0] * len(prompt) + [1] * len(response))
    return Dataset.from_dict({"input_ids": input_ids, "completion_mask": masks})


def check_packing(cfg, model) -> None:
    if not cfg.packing:
        return
    if cfg.model.trust_remote_code:
        raise ConfigError("packing: true with model.trust_remote_code: true is refused: a remote-code model's "
                          "attention may ignore the per-sample position ids, and packed samples would then attend to "
                          "each other; set packing: false")
    impl = getattr(model.config, "_attn_implementation", None)
    if impl not in PACKING_ATTENTION:
        raise ConfigError(f"packing: true with attention '{impl}' is refused: only {', '.join(PACKING_ATTENTION)} "
                          f"keep packed samples from attending to each other; set packing: false")


class StageSFTTrainer(SFTTrainer):
    def create_model_card(self, *args, **kwargs):
        """Nothing: TRL would write checkpoints/README.md ("a fine-tuned version of [None]" for a local model)."""


def build_trainer(cfg, model_path, train_dataset, tokenizer, out_dir: Path, seed: int, log_every: int = 10,
                  callbacks=()) -> SFTTrainer:
    """The SFTTrainer for an sft stage config (also used by tests and the ZeRO-3 check)."""
    args = training_arguments(cfg.training, out_dir, seed, log_every, args_class=SFTConfig,
                              max_length=cfg.training.max_length, packing=cfg.packing, packing_strategy="bfd",
                              completion_only_loss=True)
    model = load_model(model_path, cfg.model.dtype, cfg.model.attn_implementation, cfg.model.trust_remote_code)
    check_packing(cfg, model)
    return our_console(StageSFTTrainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer,
                                       peft_config=peft_config(cfg.lora) if cfg.lora.enabled else None,
                                       callbacks=list(callbacks)))
