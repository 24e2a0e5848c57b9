"""The dpo stage's Trainer: transformers' Trainer with our loss (losses.py) and log-probs (logprobs.py).

The reference log-probs come from the batch (`ref_logps`, the cached reference: reference_cache.py), from a
frozen reference model (under ZeRO-3 sharded like the policy, via TRL's prepare_deepspeed), or, with LoRA and
no reference model, from the policy with its adapters off. Each training log carries the means of METRICS over
the micro-batches since the last log, reduced over ranks (TRL's names, plus loss/dpo and loss/sft).
"""

from __future__ import annotations

import torch
import torch.distributed as tdist
from transformers import Trainer
from trl.models.utils import prepare_deepspeed

from ..config import ConfigError
from .logprobs import pair_logps, sides
from .losses import fine_grained_dpo_loss
from .prefix_sharing import decide

METRICS = ("loss/dpo", "loss/sft", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
           "logps/chosen", "logps/rejected")


def sharing(ctx, model_config):
    """(share the prefix?, why) for the stage's prefix_sharing key; a refusal names the key."""
    try:
        return decide(model_config, ctx.cfg.prefix_sharing)
    except ValueError as e:
        raise ConfigError(f"stages.{ctx.name}.{e}") from None


class FineGrainedDPOTrainer(Trainer):
    loss_is_scaled_for_ga = False  # compute_loss returns a per-micro-batch mean; Trainer divides by accumulation

    def __init__(self, *args, loss_config, reference_model=None, chunk_size=1024, **kw):
        super().__init__(*args, **kw)
        self.loss_config, self.chunk_size = loss_config, chunk_size
        self.reference_model = reference_model
        if reference_model is not None:
            if self.is_deepspeed_enabled:  # sharded like the policy under ZeRO-3
                self.reference_model = prepare_deepspeed(reference_model, self.accelerator)
            else:
                self.reference_model = reference_model.to(self.args.device).eval()
        self._sums = torch.zeros(len(METRICS) + 1, dtype=torch.float64, device=self.args.device)

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
        if not torch.isfinite(out.loss):
            raise FloatingPointError(f"non-finite DPO loss at step {self.state.global_step} on pairs "
                                     f"{inputs['pair_index'].tolist()} (dataset rows of the kept pairs); lower "
                                     f"training.learning_rate or check those pairs")
        margins = out.chosen_rewards - out.rejected_rewards
        values = [out.dpo.detach(), out.sft.detach(), out.chosen_rewards, out.rejected_rewards,
                  (margins > 0).to(margins.dtype), margins, out.policy_chosen, out.policy_rejected]
        self._sums += torch.stack([v.double().sum() for v in values] + [self._sums.new_tensor(len(out.dpo))])
        return (out.loss, out) if return_outputs else out.loss

    def log(self, logs, start_time=None):
        if "loss" in logs and self._sums[-1] > 0:  # a training log (not the end-of-training summary)
            sums = self._sums.clone()
            if tdist.is_available() and tdist.is_initialized():
                tdist.all_reduce(sums)
            logs.update({name: (sums[i] / sums[-1]).item() for i, name in enumerate(METRICS)})
            self._sums.zero_()
        super().log(logs, start_time)
