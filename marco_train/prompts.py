"""The one prompt contract: how (task, question) becomes a chat prompt, and how a tagged response is read.

mcts, sft, dpo and eval all go through these functions, so a model is searched, trained and evaluated on
exactly the same text. A response is a sequence of tagged segments `<type>...</type>` (mcts_data/README.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional

NODE_TYPES = ("sub_task", "thinking", "hypothesis", "double_check", "reflection", "thinking_from_scratch",
              "reclarify", "answer")
SEGMENT_SEPARATOR = "\n"
# The v2 strings the search prefills and the toy traces use (the authors' sub-task prefill, the v1 reflection).
SUB_TASK_PREFILL = "Firstly, I need to break down this task."
REFLECTION_TEXT = "Wait! Maybe I made some mistakes! I need to rethink from scratch."
_SEGMENT_RE = re.compile(r"<(" + "|".join(NODE_TYPES) + r")>(.*?)(</\1>|(?=<(?:" + "|".join(NODE_TYPES) + r")>)|$)",
                         re.S)


def open_tag(node_type: str) -> str:
    return f"<{node_type}>"


def close_tag(node_type: str) -> str:
    return f"</{node_type}>"


def render_segment(node_type: str, text: str) -> str:
    return f"{open_tag(node_type)}{text}{close_tag(node_type)}"


def render_response(segments: List[tuple]) -> str:
    """[(type, text), ...] -> the tagged response text (segments joined by SEGMENT_SEPARATOR)."""
    return SEGMENT_SEPARATOR.join(render_segment(t, x) for t, x in segments)


def messages(task, question: str) -> List[dict]:
    out = [{"role": "system", "content": task.system_prompt}] if task.system_prompt else []
    return out + [{"role": "user", "content": task.user_message(question)}]


def row_messages(task, row: dict) -> List[dict]:
    """A data row's prompt: its own `prompt` messages (a user's conversational data, data/user_data.py) if it
    has them, else the task's messages for its `question`."""
    return list(row["prompt"]) if row.get("prompt") else messages(task, row["question"])


def chat_prompt(tokenizer, prompt_messages: List[dict]) -> str:
    """The messages + the assistant generation prompt, via the tokenizer's chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')} has no chat template; use an "
                         f"instruct checkpoint or set one")
    return tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)


def chat_prompt_ids(tokenizer, prompt_messages: List[dict]) -> List[int]:
    return tokenizer(chat_prompt(tokenizer, prompt_messages), add_special_tokens=False)["input_ids"]


def build_prompt(tokenizer, task, question: str) -> str:
    """System text + user turn + the assistant generation prompt, via the tokenizer's chat template."""
    return chat_prompt(tokenizer, messages(task, question))


def prompt_ids(tokenizer, task, question: str) -> List[int]:
    return chat_prompt_ids(tokenizer, messages(task, question))


def response_ids(tokenizer, response: str) -> List[int]:
    """The response tokens a model is trained on: the response text followed by the end-of-turn token."""
    return tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


@dataclass
class Segment:
    type: str
    text: str
    closed: bool


def parse_response(text: str) -> List[Segment]:
    """Tagged segments in order; an unclosed last segment (truncated output) has closed=False."""
    return [Segment(m.group(1), m.group(2), m.group(3).startswith("</")) for m in _SEGMENT_RE.finditer(text)]


def answer_text(text: str) -> Optional[str]:
    """The text of the last <answer> segment (closed or not), or None if the response has none."""
    answers = [s for s in parse_response(text) if s.type == "answer"]
    return answers[-1].text if answers else None


def closed_answer_text(text: str) -> Optional[str]:
    """The text of the last <answer> segment if that segment is closed (`</answer>` written), else None: the
    scope of the paper's *no answer* rule (tasks/base.py)."""
    answers = [s for s in parse_response(text) if s.type == "answer"]
    return answers[-1].text if answers and answers[-1].closed else None
