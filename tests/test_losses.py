"""The fine-grained DPO loss (marco_train/train/losses.py) against hand-computed numbers and a plain reference."""

import itertools
import math

import pytest
import torch

from marco_train.train.losses import LossConfig, SideLogps, cdpo_loss, fine_grained_dpo_loss, segment_sums

# One pair, shared prefix of 2 response tokens (identical log-probs on both sides, as for a real model).
PAIR = {
    "policy_chosen": [-1.0, -2.0, -0.5, -1.5],
    "policy_rejected": [-1.0, -2.0, -3.0],
    "ref_chosen": [-1.2, -1.8, -1.0, -0.6],
    "ref_rejected": [-1.2, -1.8, -2.0],
    "prefix": 2,
}
# Δ by hand (β = 0.1):
#   sum,  masked:   lp: pc=-2.0 rc=-1.6 pr=-3.0 rr=-2.0            Δ = 0.1·((-0.4) - (-1.0))      = 0.06
#   sum,  unmasked: pc=-5.0 rc=-4.6 pr=-6.0 rr=-5.0                Δ = 0.1·((-0.4) - (-1.0))      = 0.06
#                   (the prefix cancels)
#   mean, masked:   pc=-1.0 rc=-0.8 pr=-3.0 rr=-2.0                Δ = 0.1·((-0.2) - (-1.0))      = 0.08
#   mean, unmasked: pc=-1.25 rc=-1.15 pr=-2.0 rr=-5/3              Δ = 0.1·((-0.1) - (-1/3))      = 0.02333...
# cDPO(Δ, ε) = -(1-ε)·log σ(Δ) - ε·log σ(-Δ) = log(1 + e^-Δ) + ε·Δ:
CDPO = {  # (reduction, masked, ε) -> value, from math.log1p(math.exp(-Δ)) + ε·Δ
    ("sum", True, 0.0): 0.6635971130761409, ("sum", True, 0.1): 0.6695971130761409,
    ("sum", False, 0.0): 0.6635971130761409, ("sum", False, 0.1): 0.6695971130761409,
    ("mean", True, 0.0): 0.6539469673175899, ("mean", True, 0.1): 0.66194696731759,
    ("mean", False, 0.0): 0.6815485679050374, ("mean", False, 0.1): 0.6838819012383707,
}
# L_SFT (per-token mean NLL of the chosen response): masked -(-0.5 - 1.5)/2 = 1.0; unmasked -(-5.0)/4 = 1.25.
SFT = {True: 1.0, False: 1.25}


def sides(values, prefix_lens, requires_grad=False):
    """SideLogps from ragged per-token lists (one per pair), through the public segment_sums."""
    width = max(map(len, values))
    t = torch.tensor([v + [0.0] * (width - len(v)) for v in values], dtype=torch.float64, requires_grad=requires_grad)
    mask = torch.tensor([[1] * len(v) + [0] * (width - len(v)) for v in values])
    return t, segment_sums(t, mask, torch.tensor(prefix_lens))


def run(cfg, pairs=(PAIR,)):
    get = lambda key: sides([p[key] for p in pairs], [p["prefix"] for p in pairs])[1]  # noqa: E731
    return fine_grained_dpo_loss(get("policy_chosen"), get("policy_rejected"), get("ref_chosen"), get("ref_rejected"),
                                 cfg)


@pytest.mark.parametrize("reduction,masked,epsilon,alpha",
                         list(itertools.product(["sum", "mean"], [True, False], [0.0, 0.1], [0.0, 1.0])))
def test_hand_computed_loss(reduction, masked, epsilon, alpha):
    cfg = LossConfig(beta=0.1, epsilon=epsilon, alpha=alpha, mask_prefix=masked, mask_sft_prefix=masked,
                     logp_reduction=reduction)
    out = run(cfg)
    assert out.dpo.item() == pytest.approx(CDPO[(reduction, masked, epsilon)], abs=1e-12)
    assert out.sft.item() == pytest.approx(SFT[masked], abs=1e-12)
    assert out.loss.item() == pytest.approx(CDPO[(reduction, masked, epsilon)] + alpha * SFT[masked], abs=1e-12)
    assert out.delta.item() != 0


def test_metrics_are_trl_rewards():
    out = run(LossConfig())  # sum, masked: pc=-2.0 rc=-1.6 pr=-3.0 rr=-2.0
    assert out.chosen_rewards.item() == pytest.approx(0.1 * (-2.0 + 1.6))
    assert out.rejected_rewards.item() == pytest.approx(0.1 * (-3.0 + 2.0))
    assert out.policy_chosen.item() == pytest.approx(-2.0) and out.policy_rejected.item() == pytest.approx(-3.0)
    assert (out.chosen_rewards - out.rejected_rewards).item() == pytest.approx(out.delta.item())


def test_sft_sum_normalisation():
    out = run(LossConfig(alpha=1.0, sft_normalisation="sum"))
    assert out.sft.item() == pytest.approx(2.0)  # -(-0.5 - 1.5), not divided by the 2 tokens
    assert run(LossConfig(mask_sft_prefix=False, sft_normalisation="sum")).sft.item() == pytest.approx(5.0)


def random_pairs(seed, n=5):
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        k, lc, lr = (int(x) for x in torch.randint(0, 6, (3,), generator=g))
        lc, lr = lc + 1, lr + 1  # suffixes are never empty
        prefix_pol, prefix_ref = (-torch.rand(k, generator=g) * 3).tolist(), (-torch.rand(k, generator=g) * 3).tolist()
        draw = lambda m: (-torch.rand(m, generator=g) * 3).tolist()  # noqa: E731
        pairs.append({"policy_chosen": prefix_pol + draw(lc), "policy_rejected": prefix_pol + draw(lr),
                      "ref_chosen": prefix_ref + draw(lc), "ref_rejected": prefix_ref + draw(lr), "prefix": k})
    return pairs


def test_with_sums_masking_leaves_the_dpo_term_unchanged():
    pairs = random_pairs(1)
    on = run(LossConfig(epsilon=0.1, mask_prefix=True), pairs)
    off = run(LossConfig(epsilon=0.1, mask_prefix=False), pairs)
    assert torch.allclose(on.delta, off.delta, atol=1e-12) and torch.allclose(on.dpo, off.dpo, atol=1e-12)
    assert (on.delta != 0).all()


def test_masking_changes_the_loss_through_sft_and_mean():
    pairs = random_pairs(2)
    masked = run(LossConfig(alpha=1.0), pairs)
    unmasked = run(LossConfig(alpha=1.0, mask_prefix=False, mask_sft_prefix=False), pairs)
    assert abs(masked.loss.item() - unmasked.loss.item()) > 1e-3  # "+masking" matters, via the SFT term
    assert torch.allclose(masked.dpo, unmasked.dpo, atol=1e-12)
    mean_on = run(LossConfig(logp_reduction="mean"), pairs)
    mean_off = run(LossConfig(logp_reduction="mean", mask_prefix=False), pairs)
    assert (mean_on.dpo - mean_off.dpo).abs().max().item() > 1e-3  # with means the prefix no longer cancels


def plain_reference_loss(pol_c, pol_r, ref_c, ref_r, masks, cfg):
    """Written from the formulas with token masks and explicit sigmoids, independent of losses.py."""
    def lp(tokens, mask):
        return (tokens * mask).sum(-1) / (mask.sum(-1) if cfg.logp_reduction == "mean" else 1)

    dm_c, dm_r, sft_m = masks["dpo_c"], masks["dpo_r"], masks["sft"]
    d = cfg.beta * ((lp(pol_c, dm_c) - lp(ref_c, dm_c)) - (lp(pol_r, dm_r) - lp(ref_r, dm_r)))
    dpo = -(1 - cfg.epsilon) * torch.log(torch.sigmoid(d)) - cfg.epsilon * torch.log(1 - torch.sigmoid(d))
    sft = -(pol_c * sft_m).sum(-1) / sft_m.sum(-1)
    return (dpo + cfg.alpha * sft).mean()


@pytest.mark.parametrize("reduction,masked", [("sum", True), ("sum", False), ("mean", True), ("mean", False)])
def test_gradients_equal_autograd_of_a_plain_reference(reduction, masked):
    pairs = random_pairs(3)
    cfg = LossConfig(beta=0.3, epsilon=0.1, alpha=1.0, mask_prefix=masked, mask_sft_prefix=masked,
                     logp_reduction=reduction)
    prefix = [p["prefix"] for p in pairs]
    pol_c, pc = sides([p["policy_chosen"] for p in pairs], prefix, requires_grad=True)
    pol_r, pr = sides([p["policy_rejected"] for p in pairs], prefix, requires_grad=True)
    ref_c, rc = sides([p["ref_chosen"] for p in pairs], prefix, requires_grad=True)
    ref_r, rr = sides([p["ref_rejected"] for p in pairs], prefix, requires_grad=True)
    ours = fine_grained_dpo_loss(pc, pr, rc, rr, cfg).loss
    ours.backward()
    grads = [t.grad.clone() for t in (pol_c, pol_r)]
    assert ref_c.grad is None and ref_r.grad is None  # the reference is a constant

    leaves = [t.detach().clone().requires_grad_(True) for t in (pol_c, pol_r)]

    def masks_for(tokens_list):
        width = max(map(len, tokens_list))
        real = torch.tensor([[1.0] * len(v) + [0.0] * (width - len(v)) for v in tokens_list], dtype=torch.float64)
        after = torch.tensor([[1.0 if i >= k else 0.0 for i in range(width)] for k in prefix], dtype=torch.float64)
        return real * after if masked else real

    masks = {"dpo_c": masks_for([p["policy_chosen"] for p in pairs]),
             "dpo_r": masks_for([p["policy_rejected"] for p in pairs])}
    masks["sft"] = masks["dpo_c"]
    plain = plain_reference_loss(leaves[0], leaves[1], ref_c.detach(), ref_r.detach(), masks, cfg)
    plain.backward()
    assert ours.item() == pytest.approx(plain.item(), rel=1e-12)
    for got, want in zip(grads, [t.grad for t in leaves]):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
        assert got.abs().sum() > 0


def test_cdpo_is_finite_for_extreme_margins():
    values = cdpo_loss(torch.tensor([-1e4, -50.0, 0.0, 50.0, 1e4]), 0.1)
    assert torch.isfinite(values).all()
    assert values[2].item() == pytest.approx(math.log(2))  # policy == reference: ln 2 whatever ε
    assert values[-1].item() == pytest.approx(0.1 * 1e4, rel=1e-6)  # ε·Δ: cDPO penalises over-confidence


@pytest.mark.parametrize("kwargs,words", [({"logp_reduction": "max"}, "logp_reduction"), ({"epsilon": 0.5}, "epsilon"),
                                          ({"beta": 0.0}, "beta"),
                                          ({"sft_normalisation": "tokens"}, "sft_normalisation")])
def test_bad_config_values_are_named(kwargs, words):
    with pytest.raises(ValueError, match=words):
        LossConfig(**kwargs)


def test_side_logps_counts():
    _, s = sides([[-1.0, -2.0, -3.0], [-4.0]], [1, 0])
    assert s.prefix.tolist() == [-1.0, 0.0] and s.suffix.tolist() == [-5.0, -4.0]
    assert s.prefix_tokens.tolist() == [1, 0] and s.suffix_tokens.tolist() == [2, 1]
    assert isinstance(s, SideLogps)
