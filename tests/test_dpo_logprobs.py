"""Log-probs at scored positions only, in chunks (marco_train/train/logprobs.py), against full-logit computation."""

import pytest
import torch

from dpo_testlib import plain_segment_logps, tiny_model, toy_pairs
from marco_train.tasks import get_task
from marco_train.train.dpo_data import PairCollator, tokenize_pairs
from marco_train.train.logprobs import chunked_token_logps, pair_logps


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_chunked_logps_and_gradients_equal_full_log_softmax(chunk):
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=True).double()
    hidden = torch.randn(11, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (11,))
    weights = torch.randn(11, dtype=torch.float64)
    got = chunked_token_logps(head, hidden, targets, chunk)
    (got * weights).sum().backward()
    grads = [hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()]
    hidden.grad = None
    head.zero_grad()
    want = torch.log_softmax(head(hidden), -1).gather(-1, targets[:, None]).squeeze(-1)
    (want * weights).sum().backward()
    assert torch.allclose(got, want, atol=1e-12)
    for g, w in zip(grads, [hidden.grad, head.weight.grad, head.bias.grad]):
        assert torch.allclose(g, w, atol=1e-12)


def test_log_softmax_runs_in_fp32_for_bf16_models():
    head = torch.nn.Linear(8, 50).to(torch.bfloat16)
    out = chunked_token_logps(head, torch.randn(5, 8, dtype=torch.bfloat16), torch.zeros(5, dtype=torch.long), 2)
    assert out.dtype == torch.float32


@pytest.fixture(scope="module")
def examples(toy_tokenizer):
    rows = toy_pairs(toy_tokenizer, 5, seed=3)
    return tokenize_pairs(rows, toy_tokenizer, get_task("toy"), 4096)[0]


def test_pair_logps_equal_full_logits_per_sequence(toy_tokenizer, examples):
    model = tiny_model(toy_tokenizer, seed=1).eval()
    batch = PairCollator(toy_tokenizer.pad_token_id)(examples)  # 5 pairs of different lengths: padded
    chosen, rejected = pair_logps(model, batch, chunk_size=7)
    got = torch.stack([chosen.prefix, chosen.suffix, rejected.prefix, rejected.suffix], 1)
    want = torch.tensor([plain_segment_logps(model, e) for e in examples], dtype=torch.float32)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-4)
    assert (want[:, 0] != 0).all() and torch.allclose(want[:, 0], want[:, 2], atol=1e-4)  # same prefix, same context
    assert chosen.prefix_tokens.tolist() == [len(e["prefix_ids"]) for e in examples]
    assert rejected.suffix_tokens.tolist() == [len(e["rejected_ids"]) for e in examples]


def test_only_scored_positions_reach_the_lm_head(toy_tokenizer, examples):
    model = tiny_model(toy_tokenizer, seed=1).eval()
    batch = PairCollator(toy_tokenizer.pad_token_id, score_prefix=False)(examples)
    rows_per_call, logits_widths = [], []
    model.lm_head.register_forward_hook(lambda m, i, o: rows_per_call.append(i[0].reshape(-1, i[0].shape[-1]).shape[0]))
    model.register_forward_hook(lambda m, i, o: logits_widths.append(o.logits.shape[1]))
    pair_logps(model, batch, chunk_size=16)
    n_rows, n_scored = batch["input_ids"].shape[0], len(batch["score_target"])
    assert logits_widths == [1]  # the model's own logits: the last position only (logits_to_keep=1)
    assert n_scored < batch["attention_mask"].sum().item() // 2  # prefix tokens skipped: far fewer than all tokens
    # forward (1 position per row) + the head check (1 per row) + the scored positions, 16 at a time
    assert rows_per_call[:2] == [n_rows, n_rows] and sum(rows_per_call[2:]) == n_scored
    assert max(rows_per_call[2:]) <= 16


def test_gradients_equal_full_logits_autograd(toy_tokenizer, examples):
    model = tiny_model(toy_tokenizer, seed=2).double()
    batch = PairCollator(toy_tokenizer.pad_token_id)(examples[:3])
    chosen, rejected = pair_logps(model, batch, chunk_size=5)
    (chosen.suffix.sum() - 0.5 * rejected.suffix.sum() + 0.1 * chosen.prefix.sum()).backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    total = 0.0
    for e in examples[:3]:
        for key, weight in (("chosen_ids", 1.0), ("rejected_ids", -0.5)):
            ids = e["prompt_ids"] + e["prefix_ids"] + e[key]
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)[:-1]
            lp = lp.gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
            start, k = len(e["prompt_ids"]), len(e["prefix_ids"])
            total = total + weight * lp[start - 1 + k:].sum() + (0.1 * lp[start - 1:start - 1 + k].sum() if
                                                                 key == "chosen_ids" else 0.0)
    total.backward()
    for name, p in model.named_parameters():
        assert torch.allclose(ours[name], p.grad, rtol=1e-9, atol=1e-11), name


def test_models_whose_logits_are_not_the_head_of_the_last_state_are_refused(toy_tokenizer, examples):
    model = tiny_model(toy_tokenizer).eval()

    def scaled(module, inputs, output):
        output.logits = output.logits * 2.0  # a logit scale, as some models apply after the head
        return output

    model.register_forward_hook(scaled)
    with pytest.raises(NotImplementedError, match="logit scaling or soft-capping"):
        pair_logps(model, PairCollator(toy_tokenizer.pad_token_id)(examples[:2]))


def test_models_declaring_logit_soft_capping_are_refused(toy_tokenizer, examples):
    model = tiny_model(toy_tokenizer).eval()
    model.config.final_logit_softcapping = 30.0  # as Gemma-2 declares it
    with pytest.raises(NotImplementedError, match="final_logit_softcapping"):
        pair_logps(model, PairCollator(toy_tokenizer.pad_token_id)(examples[:2]))


def test_score_budget_fixes_the_number_of_lm_head_calls(toy_tokenizer, examples):
    """Under ZeRO-3 each LM-head call gathers its weight: ranks must call it equally often (dpo_batching.py)."""
    import math

    model = tiny_model(toy_tokenizer, seed=1).eval()
    batch = PairCollator(toy_tokenizer.pad_token_id, shared=True, packed=True)(examples[:2])
    n_scored = len(batch["score_target"])
    calls = []
    model.lm_head.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    plain = torch.stack([s.suffix for s in pair_logps(model, batch, chunk_size=16)])
    budgeted = dict(batch, score_budget=torch.tensor(n_scored + 40))  # another rank scores 40 more here
    calls.clear()
    got = torch.stack([s.suffix for s in pair_logps(model, budgeted, chunk_size=16)])
    assert len(calls) == 2 + math.ceil((n_scored + 40) / 16) and sum(calls[2:]) == n_scored and max(calls) <= 16
    assert torch.allclose(got, plain, atol=1e-6)
