"""The fine-grained DPO loss's keys and their checks (the loss: losses.py); torch-free, so the dpo stage checks
them at plan time (--dry-run stays fast)."""

from __future__ import annotations

from dataclasses import dataclass

REDUCTIONS = ("sum", "mean")


@dataclass
class LossConfig:
    beta: float = 0.1
    epsilon: float = 0.1
    alpha: float = 1.0
    mask_prefix: bool = True
    mask_sft_prefix: bool = True
    logp_reduction: str = "sum"  # sum | mean (mean over the scored tokens of each response)
    sft_normalisation: str = "mean"  # mean (per-token NLL of each chosen response) | sum

    def __post_init__(self):
        if self.logp_reduction not in REDUCTIONS:
            raise ValueError(f"logp_reduction='{self.logp_reduction}': use sum or mean")
        if self.sft_normalisation not in REDUCTIONS:
            raise ValueError(f"sft_normalisation='{self.sft_normalisation}': use mean or sum")
        if not 0.0 <= self.epsilon < 0.5:
            raise ValueError(f"epsilon={self.epsilon}: the cDPO label-noise rate must be in [0, 0.5)")
        if self.beta <= 0:
            raise ValueError(f"beta={self.beta}: must be > 0")

    @property
    def needs_prefix_logps(self) -> bool:
        """Whether any term reads the prefix log-probs (if not, the log-prob code may skip scoring them)."""
        return not (self.mask_prefix and self.mask_sft_prefix)
