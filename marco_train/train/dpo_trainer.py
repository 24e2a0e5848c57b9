"""The dpo stage's Trainer: transformers' Trainer with our loss (losses.py), log-probs (logprobs.py) and batching.

Batching (dpo_batching.py): each dataloader item is one optimizer step, this rank's micro-batches of the step's
pairs (packed by a token budget, or padded `micro_pairs` at a time); `training_step` runs forward and backward per
micro-batch, syncing gradients only after the last one (DDP's no_sync; DeepSpeed's accumulation boundary), with
each pair's loss weighted so that the step's gradient is that of the mean over the step's pairs. So the
Trainer's own accumulation is 1 (`training_arguments(..., own_batching=True)`).

The reference log-probs come from the batch (`ref_logps`, the cached reference: reference_cache.py), from a
frozen reference model (under ZeRO-3 sharded like the policy, via TRL's prepare_deepspeed), or, with LoRA and
no reference model, from the policy with its adapters off. Each training log carries the means of METRICS over
the pairs since the last log, reduced over ranks (TRL's names, plus loss/dpo and loss/sft).
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.distributed as tdist
from transformers import Trainer
from trl.models.utils import prepare_deepspeed

from ..config import ConfigError
from .dpo_batching import StepDataset, step_loader
from .logprobs import pair_logps, sides
from .losses import fine_grained_dpo_loss
from .prefix_sharing import decide, decide_packing

METRICS = ("loss/dpo", "loss/sft", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
           "logps/chosen", "logps/rejected")


def layout_choice(ctx, model_config):
    """(share the prefix?, pack?, why) for the stage's prefix_sharing and packing keys; a refusal names the key."""
    remote = ctx.cfg.model.trust_remote_code
    try:
        share, share_why = decide(model_config, ctx.cfg.prefix_sharing, remote)
        pack, pack_why = decide_packing(model_config, ctx.cfg.packing, remote)
    except ValueError as e:
        raise ConfigError(f"stages.{ctx.name}.{e}") from None
    return share, pack, f"prefix sharing {'on' if share else 'off'}: {share_why}; packing {'on' if pack else 'off'}: " \
                        f"{pack_why}"


class FineGrainedDPOTrainer(Trainer):
    loss_is_scaled_for_ga = True  # compute_loss weighs each pair by world_size / (pairs in the step)

    def __init__(self, *args, loss_config, global_batch_size, micro_tokens=None, micro_pairs=None,
                 reference_model=None, chunk_size=1024, **kw):
        super().__init__(*args, **kw)
        if self.args.gradient_accumulation_steps != 1 or self.args.per_device_train_batch_size != 1:
            raise ValueError("FineGrainedDPOTrainer forms each step's micro-batches itself: build its arguments with "
                             "training_arguments(..., own_batching=True)")
        self.loss_config, self.chunk_size = loss_config, chunk_size
        self.global_batch_size, self.micro_tokens, self.micro_pairs = global_batch_size, micro_tokens, micro_pairs
        self.reference_model = reference_model
        if reference_model is not None:
            if self.is_deepspeed_enabled:  # sharded like the policy under ZeRO-3
                self.reference_model = prepare_deepspeed(reference_model, self.accelerator)
            else:
                self.reference_model = reference_model.to(self.args.device).eval()
        self._sums = torch.zeros(len(METRICS) + 1, dtype=torch.float64, device=self.args.device)
        self.steps = None

    def get_train_dataloader(self):
        if self.steps is None:
            self.steps = StepDataset(list(self.train_dataset), self.data_collator, self.global_batch_size,
                                     self.args.data_seed if self.args.data_seed is not None else self.args.seed,
                                     self.args.world_size, self.args.process_index, self.micro_tokens,
                                     self.micro_pairs)
        return step_loader(self.steps)

    def num_examples(self, dataloader) -> int:
        return len(self.train_dataset)  # pairs (the dataloader's items are steps)

    def _run_epoch(self, *args, **kwargs):
        self.steps.epoch = kwargs["epoch"]  # the step order of this epoch (also when resuming inside it)
        return super()._run_epoch(*args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        """One optimizer step's forward and backward passes over this rank's micro-batches."""
        total = None
        for i, layout in enumerate(inputs):
            last = i == len(inputs) - 1
            self.accelerator.gradient_state._set_sync_gradients(last)  # as the Trainer does within accumulation
            sync = contextlib.nullcontext if last or self.is_deepspeed_enabled else functools.partial(
                self.accelerator.no_sync, model=model)
            with sync():
                loss = super().training_step(model, layout, num_items_in_batch)
            total = loss if total is None else total + loss
        return total

    def floating_point_ops(self, inputs):
        return sum(super(FineGrainedDPOTrainer, self).floating_point_ops(layout) for layout in inputs)

    def reference_logps(self, inputs):
        if "ref_logps" in inputs:
            return sides(inputs["ref_logps"], inputs)
        with torch.no_grad():
            if self.reference_model is not None:
                return pair_logps(self.reference_model, inputs, self.chunk_size)
            with self.accelerator.unwrap_model(self.model).disable_adapter():  # LoRA: the base model
                return pair_logps(self.model, inputs, self.chunk_size)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        chosen, rejected = pair_logps(model, inputs, self.chunk_size)
        ref_chosen, ref_rejected = self.reference_logps(inputs)
        out = fine_grained_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.loss_config)
        weight = inputs.get("pair_weight")
        loss = out.loss if weight is None else (out.pair_loss * weight.to(out.pair_loss.dtype)).sum()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite DPO loss at step {self.state.global_step} on pairs "
                                     f"{inputs['pair_index'].tolist()} (dataset rows of the kept pairs); lower "
                                     f"training.learning_rate or check those pairs")
        real = torch.ones_like(out.dpo, dtype=torch.bool) if weight is None else weight > 0
        margins = out.chosen_rewards - out.rejected_rewards
        values = [out.dpo.detach(), out.sft.detach(), out.chosen_rewards, out.rejected_rewards,
                  (margins > 0).to(margins.dtype), margins, out.policy_chosen, out.policy_rejected]
        self._sums += torch.stack([v[real].double().sum() for v in values] + [self._sums.new_tensor(int(real.sum()))])
        return (loss, out) if return_outputs else loss

    def log(self, logs, start_time=None):
        # A training log (not the end-of-training summary): the same on every rank, so the reduction is collective
        # even on a rank whose micro-batches since the last log were all weight-0 fillers.
        if "loss" in logs:
            sums = self._sums.clone()
            if tdist.is_available() and tdist.is_initialized():
                tdist.all_reduce(sums)
            if sums[-1] > 0:
                logs.update({name: (sums[i] / sums[-1]).item() for i, name in enumerate(METRICS)})
            self._sums.zero_()
        super().log(logs, start_time)
