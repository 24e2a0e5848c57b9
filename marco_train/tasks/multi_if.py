"""Multi-IF, simplified: instruction following checked by rules (a subset of IFEval's verifiable instructions).

Simplifications, on purpose: our prompt contract is single-turn, so only each conversation's FIRST turn is
used; and only the instruction ids in CHECKERS are verified. A row with any other instruction (e.g.
language:response_language, which needs a language detector) is skipped with a warning that counts them.

Dataset format (facebook/Multi-IF, one CSV): key ("1019:16:en"), language, turn_{1,2,3}_prompt (a JSON
string {"role": "user", "content": ...}), turn_k_instruction_id_list (JSON list of ids), turn_k_kwargs
(JSON list of JSON strings, one per id). The reference is JSON {"instruction_id_list", "kwargs"} (null
kwargs dropped).

Model answer: the text of the last closed <answer> segment, without a leading "The answer is:". *No answer*
= no closed answer segment, or an empty answer. The whole-response fallback (untagged models, reported
apart): the last <answer> segment closed or not; a response with no tags at all is its own answer.
Correct = every instruction is followed (Multi-IF / IFEval "strict" accuracy).

We write these checkers ourselves (simplified from IFEval's rules: word = \\w+ run, sentence = text ending
in .!? or their CJK forms) rather than depend on an evaluation harness for a stretch goal.
"""

from __future__ import annotations

import inspect
import json
import re
import warnings
from typing import Callable, Dict, List, Optional

from ..io import DataError
from ..prompts import answer_text, parse_response
from .base import Problem
from .sources import DatasetTask, HubDataset, get_field, load_rows, reasoning_system_prompt, row_id

ANSWER_PREFIX_RE = re.compile(r"^\s*the answer is\s*:?\s*", re.I)


def _compare(count: int, relation: str, n: int) -> bool:
    if relation == "less than":
        return count < n
    if relation == "at least":
        return count >= n
    raise DataError(f"unknown relation {relation!r} (expected 'less than' or 'at least')")


def _words(text: str) -> int:
    return len(re.findall(r"\w+", text))


def _sentences(text: str) -> int:
    return len([s for s in re.split(r"(?<=[.!?。！？])\s*", text) if s.strip()])


def _json_ok(text: str) -> bool:
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip(), flags=re.I)
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def _paragraphs(text: str, n: int) -> bool:
    parts = re.split(r"\s?\*\*\*\s?", text)
    parts = [p for i, p in enumerate(parts) if p.strip() or i not in (0, len(parts) - 1)]
    return len(parts) == n and all(p.strip() for p in parts)


def _two_responses(text: str) -> bool:
    parts = [p.strip() for p in text.split("******")]
    parts = [p for p in parts if p]
    return len(parts) == 2 and parts[0] != parts[1]


CHECKERS: Dict[str, Callable[..., bool]] = {
    "punctuation:no_comma": lambda t: "," not in t and "，" not in t,
    "change_case:english_lowercase": lambda t: t == t.lower(),
    "change_case:english_capital": lambda t: t == t.upper(),
    "change_case:capital_word_frequency": lambda t, capital_frequency, capital_relation: _compare(
        len(re.findall(r"\b[A-Z]{2,}\b", t)), capital_relation, capital_frequency),
    "length_constraints:number_words": lambda t, num_words, relation: _compare(_words(t), relation, num_words),
    "length_constraints:number_sentences": lambda t, num_sentences, relation: _compare(
        _sentences(t), relation, num_sentences),
    "length_constraints:number_paragraphs": lambda t, num_paragraphs: _paragraphs(t, num_paragraphs),
    "detectable_format:number_bullet_lists": lambda t, num_bullets: len(
        re.findall(r"^\s*(?:\*[^*]|-).*$", t, re.M)) == num_bullets,
    "detectable_format:number_highlighted_sections": lambda t, num_highlights: len(
        [h for h in re.findall(r"\*([^\n*]+)\*", t) if h.strip()]) >= num_highlights,
    "detectable_format:title": lambda t: bool(re.search(r"<<[^\n]*\S[^\n]*>>", t)),
    "detectable_format:json_format": _json_ok,
    "detectable_format:multiple_sections": lambda t, section_spliter, num_sections: len(
        re.split(r"\s?" + re.escape(section_spliter) + r"\s?\d+\s?", t)) - 1 >= num_sections,
    "detectable_content:postscript": lambda t, postscript_marker: postscript_marker.lower() in t.lower(),
    "detectable_content:number_placeholders": lambda t, num_placeholders: len(
        re.findall(r"\[.*?\]", t)) >= num_placeholders,
    "keywords:existence": lambda t, keywords: all(k.lower() in t.lower() for k in keywords),
    "keywords:forbidden_words": lambda t, forbidden_words: not any(
        re.search(r"\b" + re.escape(w) + r"\b", t, re.I) for w in forbidden_words),
    "keywords:frequency": lambda t, keyword, frequency, relation: _compare(
        len(re.findall(re.escape(keyword), t, re.I)), relation, frequency),
    "keywords:letter_frequency": lambda t, letter, let_frequency, let_relation: _compare(
        t.lower().count(letter.lower()), let_relation, let_frequency),
    "startend:end_checker": lambda t, end_phrase: t.strip().lower().endswith(end_phrase.strip().lower()),
    "startend:quotation": lambda t: len(t.strip()) > 1 and t.strip()[0] == t.strip()[-1] == '"',
    "combination:repeat_prompt": lambda t, prompt_to_repeat: t.strip().lower().startswith(
        prompt_to_repeat.strip().lower()),
    "combination:two_responses": _two_responses,
}


def follows(text: str, instruction_id: str, kwargs: dict) -> bool:
    return CHECKERS[instruction_id](text, **kwargs)


def _json_cell(value, where: str, field: str):
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError as e:
            raise DataError(f"{where}: field '{field}' is not valid JSON ({e})") from None
    return value


class MultiIFTask(DatasetTask):
    name = "multi_if"
    hub = HubDataset("facebook/Multi-IF", None, "train")
    id_fields = ("key",)
    system_prompt = reasoning_system_prompt("followed by your full reply to the user, which must follow every "
                                            "instruction in the request.")

    def parse_row(self, row: dict, where: str):
        prompt = _json_cell(get_field(row, "turn_1_prompt", where), where, "turn_1_prompt")
        question = prompt.get("content") if isinstance(prompt, dict) else prompt
        ids = _json_cell(get_field(row, "turn_1_instruction_id_list", where), where, "turn_1_instruction_id_list")
        kwargs = [_json_cell(k, where, "turn_1_kwargs") or {}
                  for k in _json_cell(get_field(row, "turn_1_kwargs", where), where, "turn_1_kwargs")]
        if len(kwargs) != len(ids):
            raise DataError(f"{where}: {len(ids)} instruction ids but {len(kwargs)} kwargs entries")
        kwargs = [{k: v for k, v in kw.items() if v is not None} for kw in kwargs]
        return question, json.dumps({"instruction_id_list": ids, "kwargs": kwargs}, ensure_ascii=False)

    def load_problems(self, source: str = "", split: str = "", limit: int = 0) -> List[Problem]:
        label, rows = load_rows(source, split, self.hub)
        problems, skipped, seen = [], 0, set()
        for index, row in enumerate(rows):
            where = f"{label}: row {index}"
            question, reference = self.parse_row(row, where)
            ref = json.loads(reference)
            if any(i not in CHECKERS for i in ref["instruction_id_list"]):
                skipped += 1
                continue
            for instruction, kwargs in zip(ref["instruction_id_list"], ref["kwargs"]):
                try:
                    inspect.signature(CHECKERS[instruction]).bind("", **kwargs)
                except TypeError as e:
                    raise DataError(f"{where}: kwargs {kwargs} do not fit instruction '{instruction}' ({e})") from None
            pid = row_id(row, index, self.name, *self.id_fields)
            if pid in seen:
                raise DataError(f"{where}: duplicate problem id '{pid}'")
            seen.add(pid)
            problems.append(Problem(pid, question, reference))
            if limit and len(problems) == limit:
                break
        if skipped:
            warnings.warn(f"{label}: skipped {skipped} Multi-IF rows with instructions this checker does not "
                          f"verify (supported: tasks/multi_if.py CHECKERS)")
        if not problems:
            raise DataError(f"{label}: no multi_if problems with supported instructions")
        return problems

    def answer_in(self, scope: str) -> Optional[str]:
        return ANSWER_PREFIX_RE.sub("", scope).strip() or None

    def fallback_scope(self, response: str) -> Optional[str]:
        text = answer_text(response)
        return text if text is not None else (None if parse_response(response) else response)

    def is_correct(self, predicted: Optional[str], reference: str) -> bool:
        if predicted is None:
            return False
        ref = json.loads(reference)
        return all(follows(predicted, i, kw) for i, kw in zip(ref["instruction_id_list"], ref["kwargs"]))


TASK = MultiIFTask()
