"""The fine-grained DPO loss of Marco-o1 v2 as pure functions of log-prob tensors.

Per pair, with lp the (reduced) log-prob of a response under the policy θ or the frozen reference:

    Δ       = β · [(lp_θ(y_w) − lp_ref(y_w)) − (lp_θ(y_l) − lp_ref(y_l))]
    L_cDPO  = −(1 − ε) · log σ(Δ) − ε · log σ(−Δ)            (conservative DPO; ε = 0 is plain DPO)
    L       = L_cDPO + α · L_SFT                              (joint loss; L_SFT = NLL of the chosen response)

Why our own: TRL 1.16's DPOTrainer ignores label smoothing for the sigmoid loss (no cDPO), masks a prefix only
by moving it into the prompt, and cannot share the prefix computation (see logprobs.py / prefix_sharing.py).

Inputs are *segment sums*: for each response, the summed token log-probs of its shared prefix (the leading
response tokens chosen and rejected have in common) and of its divergent suffix, plus the token counts
(`SideLogps`). That is all any variant needs, and it is what the log-prob code and the reference cache produce.

Masking: `mask_prefix` drops the shared-prefix tokens from the policy and reference log-probs of both responses;
`mask_sft_prefix` drops them from the SFT term. With `logp_reduction="sum"` the prefix cancels in Δ exactly
(its policy and reference terms appear with + for y_w and − for y_l), so masking changes the loss only through
the SFT term, or through `logp_reduction="mean"` (mean over the scored tokens of each response).

Documented choices (the paper publishes none of them; every one is a config key of the dpo stage):
  * β = 0.1: TRL's and the DPO paper's default; Δ is then a tenth of the summed log-ratio margin.
  * ε = 0.1: a mild label-noise prior (cDPO of Mitchell 2023); ε = 0 recovers the sigmoid DPO loss.
  * α = 1.0: the paper's joint-loss default.
  * L_SFT normalisation, `sft_normalisation="mean"` (default): per pair, the NLL of the chosen response divided by
    its number of scored tokens (as in RPO, Pang et al. 2024), then the mean over pairs. So the SFT term is a
    per-token cross-entropy like the SFT stage's, independent of response length, and α weighs it against a
    per-pair DPO term of order ln 2. "sum" uses the summed NLL per pair instead (grows with length).
  * The total is the mean over pairs of the per-pair losses (each pair weighs the same).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .loss_config import LossConfig  # the keys; re-exported here


@dataclass
class SideLogps:
    """One response (chosen or rejected) per pair, split at the shared prefix. All tensors have shape [B]."""
    prefix: torch.Tensor  # summed log-probs of the shared-prefix response tokens
    suffix: torch.Tensor  # summed log-probs of the divergent suffix (first differing token to eos)
    prefix_tokens: torch.Tensor  # number of shared-prefix response tokens
    suffix_tokens: torch.Tensor  # number of suffix tokens (>= 1)


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar: mean over pairs of dpo + α·sft
    pair_loss: torch.Tensor  # [B] dpo + α·sft per pair (the trainer weighs them over a whole step)
    dpo: torch.Tensor  # [B] cDPO loss per pair
    sft: torch.Tensor  # [B] SFT term per pair (before α)
    delta: torch.Tensor  # [B] Δ
    chosen_rewards: torch.Tensor  # [B] β·(lp_θ(y_w) − lp_ref(y_w)), TRL's rewards/chosen
    rejected_rewards: torch.Tensor  # [B]
    policy_chosen: torch.Tensor  # [B] reduced policy log-probs (TRL's logps/chosen)
    policy_rejected: torch.Tensor  # [B]


def segment_sums(token_logps: torch.Tensor, response_mask: torch.Tensor, prefix_len: torch.Tensor) -> SideLogps:
    """SideLogps from per-token log-probs [B, T] over response positions (mask [B, T] marks real tokens).

    Response tokens at index < prefix_len[b] form the shared prefix. Padding must be masked out.
    """
    positions = torch.arange(token_logps.shape[1], device=token_logps.device)[None, :]
    real = response_mask.bool()
    in_prefix = real & (positions < prefix_len[:, None])
    in_suffix = real & ~in_prefix
    zero = torch.zeros((), dtype=token_logps.dtype, device=token_logps.device)
    return SideLogps(prefix=torch.where(in_prefix, token_logps, zero).sum(-1),
                     suffix=torch.where(in_suffix, token_logps, zero).sum(-1),
                     prefix_tokens=in_prefix.sum(-1), suffix_tokens=in_suffix.sum(-1))


def sequence_logps(side: SideLogps, mask_prefix: bool, reduction: str) -> torch.Tensor:
    """lp(y) per pair: suffix (+ prefix unless masked), summed or averaged over the scored tokens."""
    total = side.suffix if mask_prefix else side.prefix + side.suffix
    if reduction == "sum":
        return total
    count = side.suffix_tokens if mask_prefix else side.prefix_tokens + side.suffix_tokens
    return total / count.clamp(min=1).to(total.dtype)


def dpo_delta(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
              ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """Δ = β·[(lp_θ(y_w) − lp_ref(y_w)) − (lp_θ(y_l) − lp_ref(y_l))]."""
    return beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))


def cdpo_loss(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """−(1−ε)·log σ(Δ) − ε·log σ(−Δ), elementwise (logsigmoid: finite for any finite Δ)."""
    return -(1.0 - epsilon) * F.logsigmoid(delta) - epsilon * F.logsigmoid(-delta)


def sft_nll(chosen: SideLogps, mask_prefix: bool, normalisation: str) -> torch.Tensor:
    """NLL of the chosen response per pair: per scored token ("mean", the default) or summed ("sum")."""
    return -sequence_logps(chosen, mask_prefix, normalisation)


def fine_grained_dpo_loss(policy_chosen: SideLogps, policy_rejected: SideLogps, ref_chosen: SideLogps,
                          ref_rejected: SideLogps, cfg: LossConfig) -> LossOutput:
    """cDPO + α·SFT with prefix masking; the reference terms carry no gradient."""
    lp = lambda side: sequence_logps(side, cfg.mask_prefix, cfg.logp_reduction)  # noqa: E731
    pc, pr = lp(policy_chosen), lp(policy_rejected)
    rc, rr = lp(ref_chosen).detach(), lp(ref_rejected).detach()
    delta = dpo_delta(pc, pr, rc, rr, cfg.beta)
    dpo = cdpo_loss(delta, cfg.epsilon)
    sft = sft_nll(policy_chosen, cfg.mask_sft_prefix, cfg.sft_normalisation)
    pair_loss = dpo + cfg.alpha * sft
    return LossOutput(loss=pair_loss.mean(), pair_loss=pair_loss, dpo=dpo, sft=sft, delta=delta,
                      chosen_rewards=(cfg.beta * (pc - rc)).detach(), rejected_rewards=(cfg.beta * (pr - rr)).detach(),
                      policy_chosen=pc.detach(), policy_rejected=pr.detach())
