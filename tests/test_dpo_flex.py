"""The FlexAttention path (train/prefix_sharing.py): one mask_mod gives the dense mask and the block mask, which
agree element by element; compiled FlexAttention attends exactly there and its log-probs equal sdpa's (forward:
torch 2.13 refuses FlexAttention's backward on CPU; launchers/gpu_smoke.py checks it on a GPU)."""

import pytest
import torch

from dpo_testlib import tiny_model, toy_pairs
from marco_train.tasks import get_task
from marco_train.train.dpo_data import PairCollator, tokenize_pairs
from marco_train.train.logprobs import pair_logps
from marco_train.train.prefix_sharing import block_tree_mask, dense_tree_mask


@pytest.fixture(scope="module")
def examples(toy_tokenizer):
    return tokenize_pairs(toy_pairs(toy_tokenizer, 4, seed=11), toy_tokenizer, get_task("toy"), 4096)[0]


def element_mask_of(block_mask, mask_mod_values: torch.Tensor) -> torch.Tensor:
    """What FlexAttention computes from a BlockMask: full blocks whole, partial blocks through mask_mod (its values
    given, [R, T, T]), every other block skipped; rebuilt element by element from the block tables."""
    rows, width = mask_mod_values.shape[:2]
    q_size, kv_size = block_mask.BLOCK_SIZE
    blocks = {False: torch.zeros(rows, width, width, dtype=torch.bool), True: torch.zeros_like(mask_mod_values)}
    for full, num, indices in ((False, block_mask.kv_num_blocks, block_mask.kv_indices),
                               (True, block_mask.full_kv_num_blocks, block_mask.full_kv_indices)):
        for b in range(rows):
            for qb in range(num.shape[-1]):
                for kb in indices[b, 0, qb, :num[b, 0, qb]].tolist():
                    blocks[full][b, qb * q_size:(qb + 1) * q_size, kb * kv_size:(kb + 1) * kv_size] = True
    assert not (blocks[True] & blocks[False]).any()  # a block is full or partial, not both
    return blocks[True] | (blocks[False] & mask_mod_values)


def test_dense_and_block_masks_agree_element_by_element(examples):
    packed, padded = PairCollator(0, shared=True, packed=True)(examples), PairCollator(0, shared=True)(examples[:3])
    assert packed["input_ids"].shape[1] > 256 and padded["input_ids"].shape[0] == 3  # several blocks; several rows
    for layout in (packed, padded):
        seq, branch = layout["seq_ids"], layout["branch_ids"]
        rows, width = seq.shape
        dense = dense_tree_mask(seq, branch)[:, 0]
        block = block_tree_mask(seq, branch)
        assert block.shape == (rows, 1, width, width)
        assert torch.equal(element_mask_of(block, dense), dense)
    blocks = -(-packed["input_ids"].shape[1] // 128)
    computed = int(block_tree_mask(packed["seq_ids"], packed["branch_ids"]).kv_num_blocks.sum()
                   + block_tree_mask(packed["seq_ids"], packed["branch_ids"]).full_kv_num_blocks.sum())
    assert computed < blocks * (blocks + 1) // 2  # whole blocks of other trees are skipped, not masked


@pytest.mark.slow
def test_compiled_flex_attention_attends_exactly_where_the_dense_mask_allows(examples):
    """q = 0 makes every allowed key equally likely; v = identity reads the attention weights back."""
    from torch.nn.attention.flex_attention import flex_attention

    layout = PairCollator(0, shared=True, packed=True)(examples[:3])
    seq, branch = layout["seq_ids"], layout["branch_ids"]
    width = seq.shape[1]
    q = torch.zeros(1, 1, width, 16)
    v = torch.eye(width)[None, None]
    weights = torch.compile(flex_attention)(q, torch.zeros_like(q), v, block_mask=block_tree_mask(seq, branch))
    dense = dense_tree_mask(seq, branch)[0, 0]
    assert torch.equal(weights[0, 0] > 0, dense)
    assert torch.allclose(weights[0, 0].sum(-1), torch.ones(width), atol=1e-6)


@pytest.mark.slow
def test_flex_attention_logprobs_equal_sdpa(toy_tokenizer, examples):
    """Transformers' flex_attention (compiled) on packed trees vs sdpa on plain padded rows: the same log-probs."""
    sdpa = tiny_model(toy_tokenizer, seed=3).eval()
    flex = tiny_model(toy_tokenizer, seed=3, attn="flex_attention").eval()
    assert flex.config._attn_implementation == "flex_attention"

    def segments(model, **kind):
        with torch.no_grad():
            chosen, rejected = pair_logps(model, PairCollator(toy_tokenizer.pad_token_id, **kind)(examples))
        return torch.stack([chosen.prefix, chosen.suffix, rejected.prefix, rejected.suffix], 1)

    want = segments(sdpa)
    assert (want[:, 1] != 0).all()
    for kind in ({"shared": True, "packed": True}, {"packed": True}):
        assert torch.allclose(segments(flex, **kind), want, rtol=1e-5, atol=1e-5), kind
