"""The dpo stage's batching (train/dpo_batching.py): steps in pairs, micro-batches by token budget, equal on every
rank; and in-process, a step's update does not depend on the budget or the layout (the 2-rank, DDP and ZeRO-3
checks are in test_dpo_packed_distributed.py)."""

import pytest
import torch

from dpo_testlib import dpo_trainer, examples_with_reference, tiny_model
from marco_train.train.dpo_batching import first_fit_decreasing, plan_step, spread, step_pairs


def test_steps_cover_every_pair_once_per_epoch_in_a_seeded_order():
    steps = step_pairs(10, 4, seed=3, epoch=0)
    assert [len(s) for s in steps] == [4, 4, 2] and sorted(sum(steps, [])) == list(range(10))
    assert steps == step_pairs(10, 4, seed=3, epoch=0)  # no budget, no world size among the arguments
    assert steps != step_pairs(10, 4, seed=3, epoch=1) and steps != step_pairs(10, 4, seed=4, epoch=0)


def test_first_fit_decreasing_by_hand():
    assert first_fit_decreasing([5, 3, 8, 2, 4], 10) == [[2, 3], [0, 4], [1]]  # 8+2, 5+4, 3
    assert first_fit_decreasing([12, 3], 10) == [[0], [1]]  # too long for the budget: alone


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("budget", [100, 256, 1024])
def test_every_rank_takes_as_many_micro_batches_and_every_pair_is_taken_once(world, budget):
    sizes = [30 + (17 * i) % 140 for i in range(11)]
    ranks = plan_step(sizes, world, micro_tokens=budget)
    assert len({len(r) for r in ranks}) == 1
    taken = sorted(i for r in ranks for m in r if not m.filler for i in m.items)
    assert taken == list(range(11))
    for r in ranks:
        for m in r:
            assert sum(sizes[i] for i in m.items) <= budget or len(m.items) == 1
            assert not m.filler or len(m.items) == 1


def test_fewer_pairs_than_ranks_get_weight_zero_copies():
    ranks = spread([[0]], [50], world=3)
    assert [len(r) for r in ranks] == [1, 1, 1]
    assert [m.filler for r in ranks for m in r] == [False, True, True]
    ranks = spread([[0, 1, 2]], [50, 40, 30], world=2)  # one micro-batch: split, no filler
    assert sorted(sorted(m.items) for r in ranks for m in r) == [[0], [1, 2]] and not any(m.filler for r in ranks
                                                                                            for m in r)


def test_weights_make_the_step_a_mean_over_its_pairs(toy_tokenizer, tmp_path):
    examples = examples_with_reference(toy_tokenizer, 10, seed=1, model=tiny_model(toy_tokenizer))
    trainer = dpo_trainer(tiny_model(toy_tokenizer), examples, tmp_path, toy_tokenizer.pad_token_id, budget=256,
                          global_batch=8)
    loader = trainer.get_train_dataloader()
    steps = list(loader)
    assert len(steps) == 2
    first = steps[0]
    assert sum(layout["pair_weight"].sum().item() for layout in first) == pytest.approx(1.0)  # 8 pairs x 1/8
    assert all(layout["input_ids"].shape[0] == 1 and layout["input_ids"].shape[1] <= 256 or
               len(layout["pair_index"]) == 1 for layout in first)
    assert all(int(layout["score_budget"]) == len(layout["score_target"]) for layout in first)  # one rank
    assert sorted(i for layout in first for i in layout["pair_index"].tolist()) == sorted(
        examples[i]["pair_index"] for i in step_pairs(10, 8, seed=0, epoch=0)[0])


def updates(toy_tokenizer, tmp_path, examples, steps=2, **kind):
    """Parameter updates of `steps` SGD steps, in float64 (so that the comparison is not float32 rounding)."""
    model = tiny_model(toy_tokenizer, seed=2).double()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = dpo_trainer(model, examples, tmp_path / str(len(list(tmp_path.iterdir()))), toy_tokenizer.pad_token_id,
                          steps=steps, lr=0.5, **kind)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return losses, {n: p.detach() - before[n] for n, p in model.named_parameters()}


def test_the_update_does_not_depend_on_the_budget_or_the_layout(toy_tokenizer, tmp_path):
    """Token budget 256 vs 1,024, packed trees vs two padded rows per pair: the same update to 1e-5."""
    examples = examples_with_reference(toy_tokenizer, 12, seed=2, model=tiny_model(toy_tokenizer, seed=2).double())
    small_losses, small = updates(toy_tokenizer, tmp_path, examples, budget=256)
    for kind in ({"budget": 1024}, {"shared": False, "packed": False, "pairs": 3}, {"shared": False, "budget": 512}):
        losses, other = updates(toy_tokenizer, tmp_path, examples, **kind)
        assert losses == pytest.approx(small_losses, abs=1e-6), kind
        for name, delta in small.items():
            scale = delta.abs().max().item()
            assert scale > 0, name
            assert (delta - other[name]).abs().max().item() <= 1e-5 * scale, (kind, name)
    assert small_losses[1] < small_losses[0]  # the step moved the policy


def test_a_pair_longer_than_the_budget_trains_alone(toy_tokenizer, tmp_path):
    examples = examples_with_reference(toy_tokenizer, 3, seed=4, model=tiny_model(toy_tokenizer))
    trainer = dpo_trainer(tiny_model(toy_tokenizer), examples, tmp_path, toy_tokenizer.pad_token_id, budget=16,
                          global_batch=3)
    step = next(iter(trainer.get_train_dataloader()))
    assert [len(layout["pair_index"]) for layout in step] == [1, 1, 1]
    assert torch.isfinite(trainer.training_step(trainer.model, step))


def test_one_step_is_sgd_on_the_mean_loss_over_the_step_pairs(toy_tokenizer, tmp_path):
    """The weights (world_size / pairs in the step) make the update that of the step's mean loss, not a sum or a
    mean per micro-batch: checked against one plain padded forward over the step's pairs."""
    from marco_train.train.dpo_data import PairCollator

    examples = examples_with_reference(toy_tokenizer, 12, seed=2, model=tiny_model(toy_tokenizer, seed=2).double())
    _, update = updates(toy_tokenizer, tmp_path, examples, steps=1, budget=256)
    model = tiny_model(toy_tokenizer, seed=2).double()
    trainer = dpo_trainer(model, examples, tmp_path / "direct", toy_tokenizer.pad_token_id)
    pairs = [examples[i] for i in step_pairs(12, 8, seed=0, epoch=0)[0]]
    trainer.compute_loss(model, PairCollator(toy_tokenizer.pad_token_id)(pairs)).backward()  # the mean over 8
    for name, p in model.named_parameters():
        want = -0.5 * p.grad
        assert (update[name] - want).abs().max().item() <= 1e-5 * want.abs().max().item(), name
