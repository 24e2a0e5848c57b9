"""Prefix-shared and packed log-probs (train/prefix_sharing.py, train/layouts.py): exact in fp32; the support matrix."""

import pytest
import torch
from transformers import GPT2Config, Qwen2Config

from dpo_testlib import tiny_model
from marco_train.train.dpo_data import PairCollator
from marco_train.train.logprobs import pair_logps, segment_sums_table, sides
from marco_train.train.losses import LossConfig, fine_grained_dpo_loss
from marco_train.train.prefix_sharing import decide, decide_packing

# Different prefix lengths (long, short, empty), different suffix lengths: a padded batch either way.
PAIRS = [
    {"pair_index": 0, "prompt_ids": [1, 5, 9, 13, 7], "prefix_ids": [20, 21, 22, 23, 24, 25, 26, 27, 28],
     "chosen_ids": [40, 41, 2], "rejected_ids": [50, 2]},
    {"pair_index": 1, "prompt_ids": [1, 6, 6], "prefix_ids": [30], "chosen_ids": [42, 43, 44, 45, 2],
     "rejected_ids": [51, 52, 53, 2]},
    {"pair_index": 2, "prompt_ids": [1, 8, 3, 3], "prefix_ids": [], "chosen_ids": [46, 2], "rejected_ids": [54, 55, 2]},
]
REFERENCE = torch.tensor([[-30.0, -9.0, -30.0, -7.0], [-4.0, -15.0, -4.0, -12.0], [0.0, -6.0, 0.0, -8.0]])


LAYOUTS = {"packed shared": (True, True), "packed": (False, True), "shared": (True, False)}


def loss_and_grads(model, shared, cfg, packed=False):
    model.zero_grad()
    batch = PairCollator(0, shared=shared, score_prefix=cfg.needs_prefix_logps, packed=packed)(PAIRS)
    chosen, rejected = pair_logps(model, batch, chunk_size=8)
    ref_chosen, ref_rejected = sides(REFERENCE.to(chosen.suffix.dtype), batch)
    loss = fine_grained_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, cfg).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same(a, b, rtol=1e-5):
    assert a[0] == pytest.approx(b[0], rel=rtol)
    for name, g in a[1].items():
        scale = g.abs().max().item()
        assert scale > 0, name  # every parameter is reached
        assert (g - b[1][name]).abs().max().item() <= rtol * scale, name


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("masked", [True, False])
def test_loss_and_every_gradient_equal_the_unshared_computation(toy_tokenizer, attn, masked, layout):
    model = tiny_model(toy_tokenizer, seed=4, attn=attn).float().train()
    cfg = LossConfig(epsilon=0.1, alpha=1.0, mask_prefix=masked, mask_sft_prefix=masked, logp_reduction="mean")
    shared, packed = LAYOUTS[layout]
    assert_same(loss_and_grads(model, shared, cfg, packed), loss_and_grads(model, False, cfg))


@pytest.mark.parametrize("layout", ["packed shared", "shared"])
def test_exact_under_gradient_checkpointing(toy_tokenizer, layout):
    model = tiny_model(toy_tokenizer, seed=5).float().train()
    cfg = LossConfig(mask_prefix=False, mask_sft_prefix=False)
    plain = loss_and_grads(model, False, cfg)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    shared, packed = LAYOUTS[layout]
    assert_same(loss_and_grads(model, shared, cfg, packed), plain)


def test_segment_sums_and_reference_precompute_agree(toy_tokenizer):
    model = tiny_model(toy_tokenizer, seed=6).eval()
    collators = [PairCollator(0, s, packed=k) for s, k in ((True, False), (False, False), (True, True))]
    tables = [segment_sums_table(model, [collate(PAIRS[:2]), collate(PAIRS[2:])]) for collate in collators]
    assert tables[0].keys() == tables[1].keys() == tables[2].keys() == {0, 1, 2}
    for i in range(3):
        assert tables[0][i] == pytest.approx(tables[1][i], rel=1e-5, abs=1e-5)
        assert tables[2][i] == pytest.approx(tables[1][i], rel=1e-5, abs=1e-5)
    assert tables[0][2][0] == 0.0 and tables[0][0][0] == tables[0][0][2] != 0.0  # one shared prefix value


def test_the_shared_row_is_shorter_and_packing_drops_the_padding():
    shared, unshared = PairCollator(0, shared=True)(PAIRS), PairCollator(0)(PAIRS)
    assert shared["input_ids"].shape[0] == 3 and unshared["input_ids"].shape[0] == 6
    # per pair: prompt+prefix once + both suffixes + the last shared token repeated once: 20 + 14 + 10
    assert (shared["input_ids"] != 0).sum().item() == 44 and shared["input_ids"].numel() == 3 * 20
    # per pair: prompt+prefix twice + both suffixes: 33 + 17 + 13
    assert unshared["attention_mask"].sum().item() == 63 and unshared["input_ids"].numel() == 6 * 17
    assert PairCollator(0, shared=True, packed=True)(PAIRS)["input_ids"].shape == (1, 44)
    assert PairCollator(0, packed=True)(PAIRS)["input_ids"].shape == (1, 63)


def qwen2(**kw):
    cfg = Qwen2Config(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, **kw)
    cfg._attn_implementation = kw.get("attn_implementation", "sdpa")
    return cfg


@pytest.mark.parametrize("config,reason", [
    (qwen2(attn_implementation="flash_attention_2"), "attention 'flash_attention_2' cannot take a tree mask"),
    (qwen2(attn_implementation="paged_attention"), "attention 'paged_attention' cannot take a tree mask"),
    (qwen2(use_sliding_window=True, sliding_window=8, max_window_layers=0), "sliding-window attention layers"),
    (GPT2Config(n_layer=1, n_embd=16, n_head=2), "model type 'gpt2' is not verified"),
])
def test_unsupported_sharing_cells_switch_off_and_say_why(config, reason):
    on, why = decide(config)  # null: auto
    assert on is False and reason in why
    with pytest.raises(ValueError, match="prefix_sharing: true, but " + reason.split("'")[0]):
        decide(config, True)


def test_supported_cells_and_forcing_off():
    for attn in ("sdpa", "eager", "flex_attention"):
        assert decide(qwen2(attn_implementation=attn), True)[0]
    assert "block mask" in decide(qwen2(attn_implementation="flex_attention"))[1]
    assert decide(qwen2(), False) == (False, "prefix_sharing: false")
    assert decide(qwen2(), None, trust_remote_code=True)[0] is False


def test_packing_cells():
    """Packing holds where sharing does, and also under flash-attention and sliding windows (position ids)."""
    for cfg in (qwen2(), qwen2(attn_implementation="flash_attention_2"), qwen2(attn_implementation="flex_attention"),
                qwen2(use_sliding_window=True, sliding_window=8, max_window_layers=0)):
        assert decide_packing(cfg)[0], cfg._attn_implementation
    assert decide_packing(qwen2(), False) == (False, "packing: false")
    on, why = decide_packing(qwen2(attn_implementation="paged_attention"))
    assert not on and "does not keep packed samples apart" in why
    with pytest.raises(ValueError, match="packing: true, but a trust_remote_code model"):
        decide_packing(qwen2(), True, trust_remote_code=True)
    gpt2 = GPT2Config(n_layer=1, n_embd=16, n_head=2)
    gpt2._attn_implementation = "sdpa"
    assert decide_packing(gpt2) == (False, "model type 'gpt2' is not verified for packing (llama, qwen2, qwen3, "
                                           "mistral)")
    assert decide_packing(gpt2, True)[0]  # an explicit true packs other transformers models (unverified)


def sliding_model(toy_tokenizer):
    from transformers import Qwen2ForCausalLM

    cfg = tiny_model(toy_tokenizer).config
    cfg.use_sliding_window, cfg.sliding_window, cfg.max_window_layers = True, 4, 0
    cfg.layer_types = ["sliding_attention"] * cfg.num_hidden_layers
    torch.manual_seed(0)
    return Qwen2ForCausalLM(cfg).eval()


def suffix_logps(model, **layout):
    with torch.no_grad():
        return torch.stack([s.suffix for s in pair_logps(model, PairCollator(0, **layout)(PAIRS))])


def test_sliding_window_really_breaks_sharing_but_not_packing(toy_tokenizer):
    """Why that cell is off: with a window shorter than the sequence, the tree mask would not be exact; packed
    sequences keep their windows (transformers combines the window with the packing it reads from position ids)."""
    model = sliding_model(toy_tokenizer)
    assert decide(model.config)[0] is False and decide_packing(model.config)[0] is True
    unshared = suffix_logps(model)
    assert (suffix_logps(model, shared=True) - unshared).abs().max().item() > 1e-3
    assert (suffix_logps(model, packed=True) - unshared).abs().max().item() < 1e-5
