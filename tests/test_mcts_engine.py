"""The HF engine against plain transformers: greedy equals `generate`, reused prefixes give the same tokens,
log-probs and confidence are the raw temperature-1 values whatever the sampling temperature, samples depend
on the request's seed only, stop strings several tokens long (the real SmolLM2 tokenizer) cut the text."""

import math

import pytest
import torch

from marco_train.engines.base import SamplingParams
from marco_train.engines.confidence import token_confidence
from marco_train.engines.hf_engine import HFEngine
from marco_train.prompts import prompt_ids
from marco_train.tasks import get_task, load_problems_file
from reference_generation import generate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def prompts(toy_tokenizer):
    problems = load_problems_file("mcts_data/problems/toy_train.jsonl")[:5]
    return [prompt_ids(toy_tokenizer, get_task("toy"), p.question) for p in problems]


def test_greedy_equals_transformers_generate_with_continuous_batching_and_prefix_reuse(toy_model, toy_tokenizer,
                                                                                         prompts):
    reference = generate(toy_model, toy_tokenizer, prompts, 30, batch_size=len(prompts))
    engine = HFEngine(toy_model, toy_tokenizer, max_batch_rows=3)  # 5 prompts through 3 rows: slots are refilled
    first = engine.generate(prompts, SamplingParams(max_tokens=30, temperature=0))
    assert [c[0].token_ids for c in first] == [r.token_ids for r in reference]
    assert [c[0].text for c in first] == [r.text for r in reference]
    assert {c[0].finish_reason for c in first} == {"length"}
    assert engine.stats["reused_tokens"] > 0  # the chat-template prefix is shared
    # continuing from prompt + 15 generated tokens reuses their stored KV (fed, not prefilled) and agrees
    reused = engine.stats["reused_tokens"]
    tails = engine.generate([p + c[0].token_ids[:15] for p, c in zip(prompts, first)],
                            SamplingParams(max_tokens=15, temperature=0))
    assert [t[0].token_ids for t in tails] == [c[0].token_ids[15:] for c in first]
    assert engine.stats["reused_tokens"] - reused >= sum(len(p) + 14 for p in prompts)


def teacher_forced_logprobs(model, prompt, generated):
    ids = torch.tensor([prompt + generated])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1:-1].float()
    return torch.log_softmax(logits, dim=-1)


@pytest.mark.parametrize("temperature,top_k", [(0.5, 0), (1.0, 3)])
def test_logprobs_and_confidence_are_raw_whatever_the_sampling(toy_model, toy_tokenizer, prompts, temperature, top_k):
    engine = HFEngine(toy_model, toy_tokenizer, max_batch_rows=8)
    (comp,) = engine.generate([prompts[0]], SamplingParams(max_tokens=30, temperature=temperature, top_k=top_k,
                                                           seed=3))[0]
    lp = teacher_forced_logprobs(toy_model, prompts[0], comp.token_ids)
    top_lp, top_ids = lp.topk(5, dim=-1)
    sampled = lp.gather(1, torch.tensor(comp.token_ids)[:, None]).squeeze(1)
    assert comp.logprobs == pytest.approx(sampled.tolist(), abs=1e-4)
    assert [[i for i, _ in row] for row in comp.top_logprobs] == top_ids.tolist()
    assert [x for row in comp.top_logprobs for _, x in row] == pytest.approx(top_lp.flatten().tolist(), abs=1e-4)
    expected = [token_confidence(s, t) for s, t in zip(sampled.tolist(), top_lp.tolist())]
    assert comp.confidences == pytest.approx(expected, abs=1e-4)
    # what a tempered softmax would have reported is a different number (so this test can fail)
    tempered = torch.log_softmax(teacher_forced_logprobs(toy_model, prompts[0], comp.token_ids) / 0.25, dim=-1)
    t_top = tempered.topk(5, dim=-1).values
    t_sampled = tempered.gather(1, torch.tensor(comp.token_ids)[:, None]).squeeze(1)
    wrong = [token_confidence(s, t) for s, t in zip(t_sampled.tolist(), t_top.tolist())]
    assert max(abs(a - b) for a, b in zip(wrong, expected)) > 1e-3


def test_greedy_and_near_greedy_sampling_report_the_same_confidence(toy_model, toy_tokenizer, prompts):
    engine = HFEngine(toy_model, toy_tokenizer)
    greedy = engine.generate(prompts[:3], SamplingParams(max_tokens=30, temperature=0))
    cold = engine.generate(prompts[:3], SamplingParams(max_tokens=30, temperature=1e-3, seed=9))
    for g, c in zip(greedy, cold):
        assert g[0].token_ids == c[0].token_ids
        assert g[0].confidences == pytest.approx(c[0].confidences, abs=1e-5)
        assert min(g[0].confidences) < 0.999  # raw confidence, not the ~1.0 a temperature-1e-3 softmax gives


def test_samples_depend_on_the_request_seed_not_on_the_batch(toy_model, toy_tokenizer, prompts):
    params = SamplingParams(n=3, max_tokens=30, temperature=2.0, seed=11)
    alone = HFEngine(toy_model, toy_tokenizer).generate([prompts[2]], params)[0]
    crowd = HFEngine(toy_model, toy_tokenizer, max_batch_rows=5).generate(
        prompts[:2] + [prompts[2]] + prompts[3:],
        [SamplingParams(n=2, max_tokens=20, temperature=2.0, seed=i) for i in range(2)] + [params]
        + [SamplingParams(n=1, max_tokens=25, seed=i) for i in range(2)])[2]
    assert [c.token_ids for c in alone] == [c.token_ids for c in crowd]
    assert len({tuple(c.token_ids) for c in alone}) == 3  # the n samples of one request differ
    other = HFEngine(toy_model, toy_tokenizer).generate([prompts[2]], SamplingParams(n=3, max_tokens=30,
                                                                                     temperature=2.0, seed=12))[0]
    assert [c.token_ids for c in other] != [c.token_ids for c in alone]


def test_eos_ends_a_completion_and_is_not_returned(toy_model, toy_tokenizer, prompts):
    (comp,) = HFEngine(toy_model, toy_tokenizer).generate([prompts[0]], SamplingParams(max_tokens=200,
                                                                                     temperature=0))[0]
    assert comp.finish_reason == "eos"
    assert toy_tokenizer.eos_token_id not in comp.token_ids
    assert comp.text.endswith("</answer>") and len(comp.logprobs) == len(comp.token_ids)


def scripted_llama(tokenizer, chains):
    """A tiny Llama whose next token is a fixed function of the current one (weights set by hand): every chain
    [t0, t1, ...] makes it emit t1 after t0, t2 after t1, ... with probability ~1."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False,
                      max_position_embeddings=256, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(cfg).eval()
    tokens = [t for chain in chains for t in chain]
    assert len(set(tokens)) == len(tokens) <= 64, "chain tokens must be distinct"
    with torch.no_grad():
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for layer in model.model.layers:  # the residual stream stays the embedding
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        dim = 0
        for chain in chains:
            for current, following in zip(chain, chain[1:]):
                model.model.embed_tokens.weight[current, dim] = 1.0
                model.lm_head.weight[following, dim] = 20.0
                dim += 1
    return model


def test_stop_at_a_closing_tag_several_tokens_long_in_the_smollm2_tokenizer(smollm2_tokenizer):
    from marco_train.mcts.search import completion_ids

    tok = smollm2_tokenizer
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert len(ids("</thinking>")) == 3 and len(ids("</answer>")) == 3  # '</', 'thinking', '>'
    overshoot = ids("ok.</thinking") + ids("><")  # the last token '><' reaches past the tag
    assert tok.decode(ids("><")) == "><" and len(ids("><")) == 1
    exact = ids("Yes </answer>")
    chain_a = ids("A") + overshoot + ids("Z")
    chain_b = ids("B") + exact + ids("\n")
    engine = HFEngine(scripted_llama(tok, [chain_a, chain_b]), tok)
    a, b = engine.generate([ids("A"), ids("B")],
                           [SamplingParams(max_tokens=20, stop=("</thinking>",)),
                            SamplingParams(max_tokens=20, stop=("</answer>", "</thinking>"))])
    (a,), (b,) = a, b
    assert a.finish_reason == "stop" and a.text == "ok.</thinking>"
    assert a.token_ids == overshoot  # as sampled, like vLLM: the text is cut, the ids are not
    assert completion_ids(engine, a) == ids("ok.</thinking") + ids(">")  # node ids decode to the node text
    assert tok.decode(completion_ids(engine, a)) == a.text
    assert b.finish_reason == "stop" and b.text == "Yes </answer>" and b.token_ids == exact
    assert completion_ids(engine, b) == exact
    (c,), = engine.generate([ids("A")], SamplingParams(max_tokens=3, stop=("</thinking>",)))
    assert c.finish_reason == "length" and c.text == "ok.</"
    assert math.isclose(sum(c.confidences) / 3, 1.0, abs_tol=1e-3)  # the scripted model is certain


def test_many_sibling_requests_through_few_rows_match_each_request_alone(toy_model, toy_tokenizer, prompts):
    engine = HFEngine(toy_model, toy_tokenizer, max_batch_rows=5)
    greedy = engine.generate(prompts, SamplingParams(max_tokens=12, temperature=0))
    # continuations of stored prefixes (short tails: fed by one leader row whose siblings are copied from it)
    # interleaved with new prompts (prefilled), so rows of both kinds come and go in the same slots
    fresh = [prompt_ids(toy_tokenizer, get_task("toy"), p.question)
             for p in load_problems_file("mcts_data/problems/toy_train.jsonl")[10:15]]
    requests = [r for p, g, f in zip(prompts, greedy, fresh) for r in (p + g[0].token_ids[:4], f,
                                                                       p + g[0].token_ids[:9])]
    params = [SamplingParams(n=2 + i % 2, max_tokens=10, temperature=1.5, seed=i) for i in range(len(requests))]
    batched = engine.generate(requests, params)
    assert engine.stats["reused_tokens"] > sum(len(r) for r in requests) // 3
    for request, param, got in zip(requests, params, batched):
        alone = HFEngine(toy_model, toy_tokenizer).generate([request], param)[0]  # cold: prefilled in one forward
        assert len(got) == param.n
        assert [c.token_ids for c in got] == [c.token_ids for c in alone]


@pytest.mark.parametrize("seed", [1, 3])
def test_random_traffic_through_four_rows_completes_every_request_once(toy_model, toy_tokenizer, seed):
    """New prompts (prefilled), continuations with a new segment start (fed by a leader row, siblings copied),
    n of 1-3, 1-7 tokens: rows are refilled all the time; each request must come back once with n samples."""
    import random

    task, rng = get_task("toy"), random.Random(seed)
    base = [prompt_ids(toy_tokenizer, task, p.question)
            for p in load_problems_file("mcts_data/problems/toy_train.jsonl")[:45]]
    engine = HFEngine(toy_model, toy_tokenizer, max_batch_rows=4)
    greedy = engine.generate(base[:3], SamplingParams(max_tokens=20, temperature=0))
    tag = toy_tokenizer("\n<thinking>", add_special_tokens=False)["input_ids"]
    requests = []
    for i in range(40):
        g = rng.randrange(3)
        prompt = base[3 + i] if rng.random() < 0.4 else base[g] + greedy[g][0].token_ids[:rng.randrange(2, 16)] + tag
        requests.append((prompt, SamplingParams(n=rng.choice([1, 2, 3]), max_tokens=rng.randrange(1, 8), seed=i)))
    for i, (prompt, params) in enumerate(requests):
        engine.add_request(i, prompt, params)
    done = {}
    for _ in range(2000):
        if not engine.has_unfinished():
            break
        for rid, comps in engine.step():
            assert rid not in done
            done[rid] = comps
    assert sorted(done) == list(range(len(requests)))
    assert [len(done[i]) for i in range(len(requests))] == [p.n for _, p in requests]
    assert engine.reserved == 0 and not engine.active
    for i in (0, 7, 21):
        alone = HFEngine(toy_model, toy_tokenizer).generate([requests[i][0]], requests[i][1])[0]
        assert [c.token_ids for c in alone] == [c.token_ids for c in done[i]]
