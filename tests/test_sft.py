"""SFT: the loss covers exactly the response tokens; packing (on by default where exact) keeps samples apart and
gives the unpacked loss and gradients, or is refused; LoRA merge."""

from __future__ import annotations

import types

import pytest
import torch
from omegaconf import OmegaConf

from conftest import TOY_CHECKPOINT
from marco_train.config import ConfigError, TrainingConfig
from marco_train.io import DataError
from marco_train.prompts import prompt_ids, response_ids
from marco_train.stages import sft
from marco_train.tasks import get_task
from marco_train.train.common import save_final
from marco_train.train.sft_trainer import build_trainer, check_packing, tokenize_sft

ROWS = [
    {"id": "q1/5", "question": "Compute 12 + 7 - 5.",
     "response": "<sub_task>Firstly, I need to break down this task. There are 2 steps.</sub_task>\n"
                 "<thinking>12 + 7 = 19</thinking>\n<thinking>19 - 5 = 14</thinking>\n"
                 "<double_check>Check: 19 - 5 = 14. Correct.</double_check>\n<answer>The answer is: 14</answer>"},
    {"id": "q2/3", "question": "Compute 3 + 4.",
     "response": "<thinking>3 + 4 = 7</thinking>\n<answer>The answer is: 7</answer>"},
    {"id": "q3/4", "question": "Compute 9 - 2 + 1.",
     "response": "<thinking>9 - 2 = 7</thinking>\n<thinking>7 + 1 = 8</thinking>\n<answer>The answer is: 8</answer>"},
]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on 2 shared cores: one thread avoids oversubscription (torchrun sets the same)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sft_cfg(**kw):
    training = TrainingConfig(global_batch_size=kw.pop("global_batch_size", 2),
                              per_device_batch_size=kw.pop("per_device_batch_size", 2), max_steps=2,
                              learning_rate=1e-3, max_length=kw.pop("max_length", 256))
    return OmegaConf.structured(sft.Config(inputs={"data": "split", "model": "bootstrap"}, training=training, **kw))


def trainer_for(tmp_path, rows, toy_tokenizer, **kw):
    cfg = sft_cfg(**kw)
    data = tokenize_sft(rows, toy_tokenizer, get_task("toy"), cfg.training.max_length)
    return build_trainer(cfg, str(TOY_CHECKPOINT), data, toy_tokenizer, tmp_path, seed=0), cfg


def test_sft_loss_covers_exactly_the_response_tokens(tmp_path, toy_tokenizer):
    trainer, _ = trainer_for(tmp_path, ROWS[:2], toy_tokenizer, packing=False)
    task = get_task("toy")
    prompts = [prompt_ids(toy_tokenizer, task, r["question"]) for r in ROWS[:2]]
    responses = [response_ids(toy_tokenizer, r["response"]) for r in ROWS[:2]]
    for i in range(2):  # the trainer's prepared rows: -100 on every prompt token, the ids on the response
        row = trainer.train_dataset[i]
        assert row["input_ids"] == prompts[i] + responses[i]
        assert row["labels"] == [-100] * len(prompts[i]) + responses[i]
        assert responses[i][-1] == toy_tokenizer.eos_token_id  # the end-of-turn token is learned too
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    width = batch["input_ids"].shape[1]
    assert batch["labels"][1, len(prompts[1]) + len(responses[1]):].tolist() == \
        [-100] * (width - len(prompts[1]) - len(responses[1]))  # padding is not learned
    model = trainer.model
    loss = trainer.compute_loss(model, dict(batch)).item()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits.float(), -1)
    nll = [-logp[b, t - 1, (prompts[b] + responses[b])[t]].item()
           for b in range(2) for t in range(len(prompts[b]), len(prompts[b]) + len(responses[b]))]
    assert loss == pytest.approx(sum(nll) / len(nll), abs=1e-5)
    everything = [-logp[b, t - 1, (prompts[b] + responses[b])[t]].item()
                  for b in range(2) for t in range(1, len(prompts[b]) + len(responses[b]))]
    assert abs(loss - sum(everything) / len(everything)) > 1e-3  # a prompt-including loss would differ


def test_too_long_samples_are_refused_not_truncated(toy_tokenizer):
    with pytest.raises(DataError, match=r"sft: row 0 \(id q1/5\): \d+ tokens > training.max_length=40"):
        tokenize_sft(ROWS, toy_tokenizer, get_task("toy"), 40)


def test_packed_samples_cannot_attend_to_each_other(tmp_path, toy_tokenizer):
    trainer, _ = trainer_for(tmp_path, ROWS, toy_tokenizer, packing=True)
    assert len(trainer.train_dataset) == 1  # all three fit in one packed row of max_length 256
    batch = trainer.data_collator([trainer.train_dataset[0]])
    assert "attention_mask" not in batch
    ids, positions = batch["input_ids"][0], batch["position_ids"][0]
    starts = (positions == 0).nonzero().flatten().tolist() + [len(ids)]
    assert len(starts) == 4
    model = trainer.model
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        leaky = model(input_ids=batch["input_ids"]).logits[0]  # one long causal sequence
        for a, b in zip(starts, starts[1:]):
            alone = model(input_ids=ids[a:b][None]).logits[0]
            assert torch.allclose(packed[a:b], alone, atol=1e-5)
            if a > 0:
                assert not torch.allclose(leaky[a:b], alone, atol=1e-3)
    labels = batch["labels"][0]
    assert all(labels[a].item() == -100 for a in starts[:-1])  # no sample predicts across a boundary


def test_packing_is_the_default_and_gives_the_unpacked_loss_and_gradients(tmp_path, toy_tokenizer):
    """null packs the toy model (qwen2, sdpa): one packed row per micro-batch, accumulation keeps the global batch;
    the loss and every gradient equal those of the same samples unpacked (a token mean over their responses)."""
    packed, _ = trainer_for(tmp_path / "p", ROWS, toy_tokenizer, global_batch_size=3, per_device_batch_size=3)
    plain, _ = trainer_for(tmp_path / "u", ROWS, toy_tokenizer, packing=False, global_batch_size=3,
                           per_device_batch_size=3)
    assert packed.args.packing and "one packed row per micro-batch" in packed.packing_why
    assert packed.args.per_device_train_batch_size == 1 and packed.args.gradient_accumulation_steps == 3
    assert not plain.args.packing and plain.args.per_device_train_batch_size == 3
    grads = []
    for trainer, rows in ((packed, [packed.train_dataset[0]]), (plain, [plain.train_dataset[i] for i in range(3)])):
        batch = trainer.data_collator(rows)
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        grads.append((loss.item(), {n: p.grad.clone() for n, p in trainer.model.named_parameters()}))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    for name, g in grads[1][1].items():
        assert (grads[0][1][name] - g).abs().max().item() <= 1e-5 * g.abs().max().item(), name


def test_packing_is_refused_where_samples_could_attend_to_each_other():
    with pytest.raises(ConfigError, match="trust_remote_code: true is refused"):
        sft.check_config(OmegaConf.merge(sft_cfg(packing=True), {"model": {"trust_remote_code": True}}),
                         "stages.sft")
    unknown = types.SimpleNamespace(_attn_implementation="paged_attention", model_type="qwen2")
    with pytest.raises(ConfigError, match="attention 'paged_attention' does not keep packed samples apart"):
        check_packing(sft_cfg(packing=True), unknown)
    assert check_packing(sft_cfg(), unknown) == (False, "attention 'paged_attention' does not keep packed samples "
                                                        "apart (use flash_attention_2, flash_attention_3, sdpa, eager, "
                                                        "flex_attention)")
    sdpa = types.SimpleNamespace(_attn_implementation="sdpa", model_type="llama")
    assert check_packing(sft_cfg(packing=True), sdpa)[0] and check_packing(sft_cfg(), sdpa)[0]
    flash = types.SimpleNamespace(_attn_implementation="flash_attention_2", model_type="qwen2")
    on, why = check_packing(sft_cfg(), flash)
    assert on and "one packed row" not in why  # varlen kernels take the whole flattened micro-batch


def test_lora_merged_save_reloads_to_the_trained_adapter(tmp_path, toy_tokenizer):
    from peft import PeftModel

    from marco_train.models import load_model

    trainer, cfg = trainer_for(tmp_path, ROWS[:2], toy_tokenizer,
                               lora=sft.SftLoraConfig(enabled=True, r=4, alpha=8, dropout=0.0, merge=True))
    trainer.train()
    final = save_final(trainer, toy_tokenizer, tmp_path, merge_onto=str(TOY_CHECKPOINT), model_cfg=cfg.model)
    assert (tmp_path / "adapter" / "adapter_config.json").exists() and not (final / "adapter_config.json").exists()
    merged = load_model(final)
    reference = PeftModel.from_pretrained(load_model(TOY_CHECKPOINT), str(tmp_path / "adapter")).eval()
    base = load_model(TOY_CHECKPOINT)
    ids = torch.tensor([prompt_ids(toy_tokenizer, get_task("toy"), "Compute 3 + 4.") + response_ids(
        toy_tokenizer, ROWS[1]["response"])])
    with torch.no_grad():
        out, ref, before = merged(ids).logits, reference(ids).logits, base(ids).logits
    assert torch.allclose(out, ref, atol=1e-4)  # W + BA merged in fp32: rounding, logits up to ~20 here
    assert not torch.allclose(out, before, atol=1e-2)  # the adapter did change the model (by ~4)


def test_a_non_finite_loss_stops_training_with_the_step(tmp_path, toy_tokenizer):
    from marco_train.train.common import TrackerCallback

    logged = []
    ctx = types.SimpleNamespace(name="sft", kind="sft",
                                tracker=types.SimpleNamespace(log=lambda m, step: logged.append((step, m))))
    cfg = sft_cfg()
    cfg.training.learning_rate, cfg.training.max_steps = 1.0e6, 4
    data = tokenize_sft(ROWS[:2], toy_tokenizer, get_task("toy"), 256)
    trainer = build_trainer(cfg, str(TOY_CHECKPOINT), data, toy_tokenizer, tmp_path, seed=0, log_every=1,
                                callbacks=[TrackerCallback(ctx)])
    with pytest.raises(FloatingPointError, match=r"sft: grad_norm is nan at step (\d+); lower training.learning_rate"):
        trainer.train()
    grad_norm = logged[-1][1]["grad_norm"]
    assert grad_norm != grad_norm and trainer.state.global_step == logged[-1][0] < 4  # NaN logged, then stopped


def test_train_loss_after_a_resume_is_the_whole_runs_mean(tmp_path, toy_tokenizer):
    """TrainOutput.training_loss after resume_from_checkpoint averages only the steps after the checkpoint; the
    stage's summary (run_train_loss) must equal the uninterrupted run's. log_every=3 with checkpoints at steps 2
    and 4: the checkpoint steps are logged anyway, so the restored log history covers every step before them."""
    import shutil

    from marco_train.train.common import TrackerCallback, run_train_loss

    ctx = types.SimpleNamespace(name="sft", kind="sft", tracker=types.SimpleNamespace(log=lambda m, step: None))
    cfg = sft_cfg()
    cfg.training.per_device_batch_size, cfg.training.max_steps, cfg.training.save_steps = 1, 5, 2
    data = tokenize_sft(ROWS, toy_tokenizer, get_task("toy"), 256)

    def trainer(out):
        return build_trainer(cfg, str(TOY_CHECKPOINT), data, toy_tokenizer, out, seed=0, log_every=3,
                             callbacks=[TrackerCallback(ctx)])

    straight = trainer(tmp_path / "a")
    whole = straight.train()
    assert [e["step"] for e in straight.state.log_history if "loss" in e] == [2, 3, 4, 5]  # 2, 4: checkpoints
    assert run_train_loss(straight, whole, None) == whole.training_loss
    checkpoint = tmp_path / "b" / "checkpoints" / "checkpoint-2"
    shutil.copytree(tmp_path / "a" / "checkpoints" / "checkpoint-2", checkpoint)  # what a kill after it leaves
    resumed = trainer(tmp_path / "b")
    rest = resumed.train(resume_from_checkpoint=str(checkpoint))
    assert abs(rest.training_loss - whole.training_loss) > 1e-3  # the Trainer's own figure: steps 3-5 only
    assert run_train_loss(resumed, rest, str(checkpoint)) == pytest.approx(whole.training_loss, abs=1e-6)
