"""The tree search (the authors' v2 rollout loop) and the scheduler that keeps many trees in flight.

One rollout (`Searcher.search`, one per tree, written as a generator so it reads sequentially): from the
root, expand the current node if it never was (all its children at once; siblings of a type are one request
with n samples), move to the first unvisited child or else the best UCT child, until a terminal node; score
it (verified / confidence / mixed), backpropagate, graft a reflection on a wrong answer, check the stopping
rules. Every expansion is *yielded* as a list of generation jobs; `Searcher.run` gathers the jobs of all
trees in flight into the engines, which batch them, and resumes each tree when its jobs are done. Nothing
in a tree depends on the order in which trees advance: its RNG and its request seeds derive from
(seed, problem id, node id), so a tree is the same whatever else is in flight (up to float rounding).

Distinct text: a sample whose text a filled sibling already has is merged into that sibling (`place`: the
sibling's `samples` counts it, the tree's `duplicates` too) instead of becoming a second node, so every
path's response text is unique in its tree and the stop rules count distinct correct texts. Merging (not
re-sampling) keeps the cost of a tree what the plan says and records how peaked the model is.

Node text is canonical; each engine keeps the token ids of every node for its own tokenizer (generated ids
as sampled, text of the other model's nodes tokenised once), so the context of an expansion is the prompt
ids + the path's node ids + the new segment's start, and the engine's prefix cache finds it stored.
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from dataclasses import dataclass, field, fields
from pathlib import PurePath
from typing import Callable, Dict, Iterable, List, Optional

from ..config import at_least
from ..engines.base import Completion, Engine, SamplingParams, derive_seed
from ..prompts import close_tag, prompt_ids
from .policy import ANSWER, REFLECTION, Policy
from .tree import (
    Node,
    StopRules,
    Tree,
    backpropagate,
    path,
    path_confidence,
    record_rollout,
    reflection_anchor,
    response_text,
    reward,
    select_child,
    stop_reason,
)


@dataclass
class SearchKeys:
    """The search's config keys. The mcts stage's Config inherits them (with tree.StopRules), so each default
    is written once, here."""
    exploration: float = at_least(0.0, default=1.414)  # c of the UCT rule
    reward: str = "verified"  # verified | confidence | mixed
    verified_weight: float = 0.5  # mixed reward: verified_weight * verified + (1 - verified_weight) * confidence
    reflect_on: str = "double_check"  # a wrong answer grafts a reflection on the nearest ancestor of this type
    reflect_on_wrong: bool = True
    reflect_below_confidence: float = 0.0  # >0: also reflect where a path's running confidence falls below this
    max_reflections_per_node: int = at_least(0, default=1)
    temperature: float = at_least(0.0, default=1.0, hint="0 = greedy")
    top_p: float = 1.0
    top_k: int = at_least(0, default=0, hint="0 = off")


@dataclass
class SearchSettings(SearchKeys):
    seed: int = 0
    rules: StopRules = field(default_factory=StopRules)

    @classmethod
    def from_config(cls, cfg, seed: int) -> "SearchSettings":
        """From an mcts stage config (its SearchKeys and StopRules keys) and the run's seed."""
        def pick(keys):
            return {f.name: cfg[f.name] for f in fields(keys)}

        return cls(seed=seed, rules=StopRules(**pick(StopRules)), **pick(SearchKeys))


@dataclass(eq=False)
class Job:
    engine: Engine
    prompt_ids: List[int]
    params: SamplingParams
    result: Optional[List[Completion]] = None  # the n completions, once generated
    spec: tuple = ()  # (child type, start text, start ids) of the children it fills
    nodes: List[Node] = field(default_factory=list)  # the placeholder children it fills


@dataclass
class Submit:
    jobs: List[Job]


@dataclass
class Wait:
    jobs: List[Job]


def token_key(engine: Engine) -> str:
    """The name under which a node's token ids for this engine's tokenizer are stored: the last two components of
    the tokenizer's hub name or path ("Qwen/Qwen2.5-7B-Instruct", "bootstrap-<fingerprint>/model"), which do
    not depend on where the runs directory is."""
    key = getattr(engine, "_token_key", None)
    if key is None:
        key = "/".join(PurePath(str(getattr(engine.tokenizer, "name_or_path", "") or engine.name)).parts[-2:])
        engine._token_key = key
    return key


def encode(engine: Engine, text: str) -> List[int]:
    return engine.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def encode_cached(engine: Engine, text: str, cache: Dict[tuple, List[int]]) -> List[int]:
    key = (id(engine), text)
    if key not in cache:
        cache[key] = encode(engine, text)
    return list(cache[key])


def completion_ids(engine: Engine, comp: Completion) -> List[int]:
    """Token ids that decode to `comp.text`: the generated ids, except when the last one reached past the stop
    string (e.g. `>\\n` closing a tag), where the part of the text it covers is tokenised instead."""
    ids = comp.token_ids
    if comp.finish_reason != "stop" or engine.decode(ids) == comp.text:
        return list(ids)
    head = engine.decode(ids[:-1])
    if comp.text.startswith(head):
        return list(ids[:-1]) + encode(engine, comp.text[len(head):])
    return encode(engine, comp.text)


def count_request(tree: Tree, engine: Engine) -> None:
    tree.requests_by_engine[engine.name] = tree.requests_by_engine.get(engine.name, 0) + 1


def count_tokens(tree: Tree, node: Node, tokens: int) -> None:
    """Generated tokens are the cost of the rollout that created the node (a sibling sampled with it included)."""
    tree.tokens_by_rollout[node.born] = tree.tokens_by_rollout.get(node.born, 0) + tokens


class Searcher:
    def __init__(self, policy: Policy, settings: SearchSettings, task, engine: Engine,
                 special_engine: Optional[Engine] = None):
        self.policy, self.settings, self.task = policy, settings, task
        self.engine, self.special_engine = engine, special_engine or engine
        self.prompts: Dict[tuple, List[int]] = {}
        self.encoded: Dict[tuple, List[int]] = {}  # segment starts (separator, tag, prefill) by engine
        self.wait_for_siblings = False  # True: an expansion waits for all its children (same trees, less overlap)
        # False: test-time search (eval/mcts_decoding.py): terminals are not scored, no reflection on a wrong answer,
        # a tree stops after max_iterations rollouts
        self.ground_truth = True

    # ------------------------------------------------------------------ token ids
    def engine_for(self, child_type: str) -> Engine:
        return self.special_engine if self.policy.special(child_type) else self.engine

    def node_ids(self, node: Node, engine: Engine) -> List[int]:
        key = token_key(engine)
        if key not in node.token_ids:  # text made by the other model, or prefill only: tokenise once
            node.token_ids[key] = encode(engine, node.text)
        return node.token_ids[key]

    def context_ids(self, tree: Tree, node: Node, engine: Engine) -> List[int]:
        key = (id(tree), token_key(engine))
        if key not in self.prompts:
            self.prompts[key] = prompt_ids(engine.tokenizer, self.task, tree.problem.question)
        ids = list(self.prompts[key])
        for n in path(node)[1:]:
            ids += self.node_ids(n, engine)
        return ids

    def new_tree(self, problem) -> Tree:
        return Tree(problem, random.Random(derive_seed(self.settings.seed, problem.id, "tree")),
                    pattern=self.policy.draw_pattern(self.settings.seed, problem.id))

    # ------------------------------------------------------------------ one tree
    def search(self, tree: Tree):
        s, rules = self.settings, self.settings.rules
        while True:
            node = tree.root
            while True:
                yield from self.ready(tree, [node])
                node = node.merged_into or node  # a duplicate sample: walk on in the sibling that has its text
                if node.is_terminal:
                    break
                if not node.expanded:
                    yield from self.expand(tree, node)
                node = select_child(node, s.exploration, tree.rng)  # never looks into a pending child
            backpropagate(node, reward(node, s.reward, s.verified_weight))
            record_rollout(tree, node)
            if self.ground_truth and not node.correct and s.reflect_on_wrong:
                anchor = reflection_anchor(node, s.reflect_on)
                if anchor is None and not self.policy.tagged and node.parent is not tree.root:
                    anchor = node.parent  # step modes: the step before the wrong answer
                if anchor is not None:
                    yield from self.ready(tree, anchor.children)
                    if self.can_reflect(anchor):
                        yield from self.expand(tree, anchor, [(REFLECTION, 1)])
            tree.stop_reason = stop_reason(tree, rules) if self.ground_truth else \
                ("rollouts_done" if tree.iterations >= rules.max_iterations else "")
            if tree.stop_reason:
                yield from self.ready(tree, tree.nodes)
                return

    def can_reflect(self, node: Node) -> bool:
        grafted = sum(c.type == REFLECTION for c in node.children)
        return (node.type != REFLECTION and node.depth + 2 <= self.policy.max_depth
                and grafted < self.settings.max_reflections_per_node)

    def expand(self, tree: Tree, node: Node, plan=None):
        """Add all children of `node` (plan: [(child type, samples)], default from the policy). Generated children
        are placeholders until their job is done: the tree goes on as soon as the child it walks into is ready,
        while its siblings are still being sampled (the tree is the same as if it had waited for all)."""
        p, s = self.policy, self.settings
        if plan is None:
            plan = p.expansions(node.type, node.depth, tree.pattern)
            low = s.reflect_below_confidence > 0 and node is not tree.root and node.type != "thinking_from_scratch"
            if low and (path_confidence(node) or 1.0) < s.reflect_below_confidence and self.can_reflect(node):
                plan = plan + [(REFLECTION, 1)]
        node.expanded = True
        jobs = []
        for k, (child_type, n) in enumerate(plan):
            prefills = p.prefills(child_type)
            prefill = tree.rng.choice(prefills) if prefills else ""
            start = p.start_text(child_type, node.text, node is tree.root, prefill)
            engine = self.engine_for(child_type)
            start_ids = encode_cached(engine, start, self.encoded)
            if p.closes_itself(child_type, prefill):
                text = p.self_closed_text(start)
                ids = start_ids if text == start else encode_cached(engine, text, self.encoded)
                self.place(tree, self.fill(tree, tree.add(node, child_type, ""), child_type, text, ids, engine))
                continue
            seed = derive_seed(s.seed, tree.problem.id, node.id, len(node.children), k)
            params = SamplingParams(n=n, max_tokens=p.max_tokens(child_type), stop=p.stops(child_type), seed=seed,
                                    temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, logprobs=0)
            job = Job(engine, self.context_ids(tree, node, engine) + start_ids, params)
            count_request(tree, engine)
            job.spec = (child_type, start, start_ids)
            job.nodes = [tree.add(node, child_type, "", pending=job) for _ in range(n)]
            jobs.append(job)
        if jobs:
            yield Submit(jobs)
            if self.wait_for_siblings:
                yield from self.ready(tree, [n for job in jobs for n in job.nodes])

    def ready(self, tree: Tree, nodes: List[Node]):
        """Wait for the jobs of these nodes (if pending) and fill in their text."""
        jobs = list({id(n.pending): n.pending for n in nodes if n.pending is not None}.values())
        if not jobs:
            return
        yield Wait(jobs)
        filled = []
        for job in jobs:
            child_type, start, start_ids = job.spec
            for node, comp in zip(job.nodes, job.result):
                node.pending = None
                filled.append(self.fill(tree, node, child_type, start, start_ids, job.engine, comp))
        yield from self.finish_open_answers(tree, filled)
        for node in filled:
            self.place(tree, node)

    def fill(self, tree: Tree, node: Node, child_type: str, start: str, start_ids: List[int], engine: Engine,
             comp: Optional[Completion] = None) -> Node:
        text, ids = start, list(start_ids)
        if comp is not None:
            text, ids = text + comp.text, ids + completion_ids(engine, comp)
            node.conf_sum, node.generated, node.finish_reason = sum(comp.confidences), len(comp.token_ids), \
                comp.finish_reason
            by_type = tree.samples_by_engine.setdefault(engine.name, {})
            by_type[child_type] = by_type.get(child_type, 0) + 1
            count_tokens(tree, node, node.generated)
            if comp.finish_reason == "length" and self.policy.is_tagged_child(child_type):
                text, ids = text + close_tag(child_type), ids + encode(engine, close_tag(child_type))
        node.text, node.token_ids = text, {token_key(engine): ids}
        node.type = self.policy.node_type(child_type, text)
        tree.tokens_generated += node.generated
        tree.sampled += comp is not None
        return node

    def finish_open_answers(self, tree: Tree, children: List[Node]):
        """Step modes: a step that opened <answer> is continued to </answer> (the answer is never split)."""
        open_ = [c for c in children if c.finish_reason != "eos" and self.policy.answer_open(c.text)]
        if self.policy.tagged or not open_:
            return
        stops, max_tokens = self.policy.answer_tail()
        jobs = []
        for c in open_:
            seed = derive_seed(self.settings.seed, tree.problem.id, c.id, "answer")
            jobs.append(Job(self.engine, self.context_ids(tree, c, self.engine),
                            SamplingParams(n=1, max_tokens=max_tokens, stop=stops, seed=seed,
                                           temperature=self.settings.temperature, top_p=self.settings.top_p,
                                           top_k=self.settings.top_k, logprobs=0)))
            count_request(tree, self.engine)
        yield Submit(jobs)
        yield Wait(jobs)
        key = token_key(self.engine)
        for c, job in zip(open_, jobs):
            comp = job.result[0]
            c.text += comp.text
            c.token_ids = {key: self.node_ids(c, self.engine) + completion_ids(self.engine, comp)}
            c.conf_sum += sum(comp.confidences)
            c.generated += len(comp.token_ids)
            c.finish_reason = comp.finish_reason
            c.type = self.policy.node_type(self.policy.granularity, c.text)
            tree.tokens_generated += len(comp.token_ids)
            count_tokens(tree, c, len(comp.token_ids))

    def place(self, tree: Tree, node: Node) -> None:
        """Merge a filled node into a settled sibling with the same text, or settle it as a node of its own."""
        twin = next((c for c in node.parent.children if c.settled and c.text == node.text), None)
        if twin is not None:
            tree.merge(node, twin)
            return
        tree.reflections += node.type == REFLECTION
        self.settle(tree, node)

    def settle(self, tree: Tree, node: Node) -> None:
        """Terminal or not; a terminal is scored by the task against the ground truth once."""
        node.settled = True
        node.is_terminal = (node.finish_reason == "eos" or node.type == ANSWER or self.policy.answer_closed(node.text)
                            or not self.policy.expansions(node.type, node.depth, tree.pattern))
        if node.is_terminal and self.ground_truth:
            node.answer, node.correct = self.task.score(response_text(node), tree.problem.answer)
        elif node.is_terminal:  # test-time search: the answer is read, never checked
            node.answer = self.task.extract_answer(response_text(node))

    # ------------------------------------------------------------------ many trees
    def run(self, problems: Iterable, on_done: Callable[[Tree, int], None], trees_in_flight: int = 64) -> None:
        """Search every problem; `on_done(tree, trees still in flight)` is called as each tree finishes.

        A tree's generator yields Submit(jobs) (queued in the engines; the tree goes on at once) and Wait(jobs)
        (the tree sleeps until they are done). Engines are stepped while any tree sleeps."""
        queue, live = deque(problems), [0]
        owners: Dict[int, tuple] = {}
        ids = itertools.count()
        engines = [self.engine] + ([self.special_engine] if self.special_engine is not self.engine else [])

        def advance(state) -> None:
            while True:
                try:
                    command = state["gen"].send(None)
                except StopIteration:
                    live[0] -= 1
                    self.prompts = {k: v for k, v in self.prompts.items() if k[0] != id(state["tree"])}
                    on_done(state["tree"], live[0])
                    return
                if isinstance(command, Submit):
                    for job in command.jobs:
                        rid = next(ids)
                        owners[rid] = (state, job)
                        job.engine.add_request(rid, job.prompt_ids, job.params)
                elif any(job.result is None for job in command.jobs):
                    state["waiting"] = command.jobs
                    return

        while queue or live[0]:
            while queue and live[0] < trees_in_flight:
                tree = self.new_tree(queue.popleft())
                live[0] += 1
                advance({"tree": tree, "gen": self.search(tree), "waiting": []})
            busy = [e for e in engines if e.has_unfinished()]
            if live[0] and not busy:
                raise RuntimeError("search stalled: trees wait for generations that no engine is running")
            for engine in busy:
                for rid, comps in engine.step():
                    state, job = owners.pop(rid)
                    job.result = comps
                    if state["waiting"] and all(j.result is not None for j in state["waiting"]):
                        state["waiting"] = []
                        advance(state)
