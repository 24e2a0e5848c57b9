"""The model card a training stage writes as <stage dir>/model/README.md, and the push of a model to the hub.

The card says what a user of the weights needs: the base model, the data, the system prompt and the tagged
response format the model was trained on, how to prompt it (the chat template's messages) and a usage snippet
that runs as written. Eval results stay in the eval stage's directory. It replaces TRL's draft card (which the
sft stage no longer writes into checkpoints/; train/sft_trainer.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

from ..prompts import NODE_TYPES, close_tag, open_tag

WHAT = {"sft": "supervised fine-tuning, the loss on the response tokens only",
        "cot": "chain-of-thought fine-tuning on tagged traces written from the task's known solutions, the "
               "loss on the response tokens only",
        "dpo": "fine-grained DPO (cDPO + an SFT term on the chosen responses)"}


def upstream_base_model(path: str) -> Optional[str]:
    """The hub name a model descends from: the name itself, or the `base_model:` of a local model's card."""
    if not Path(path).exists():
        return path
    card = Path(path) / "README.md"
    text = card.read_text() if card.is_file() else ""
    header = text.split("---", 2)[1] if text.startswith("---") else ""
    for line in header.splitlines():
        if line.startswith("base_model:"):
            return line.split(":", 1)[1].strip() or None
    return None


def _tag_format() -> str:
    tags = ", ".join(f"`{open_tag(t)}…{close_tag(t)}`" for t in NODE_TYPES if t != "answer")
    return (f"The model answers in tagged segments, one per line — {tags} — and ends with one "
            f"`{open_tag('answer')}…{close_tag('answer')}` segment holding the final answer (read it as the text of "
            f"the last answer segment; `marco_train.prompts.answer_text` does that).")


def model_card(*, kind: str, name: str, start: str, data: str, prompt_messages: List[dict],
               system_prompts: Dict[str, int], model_path: str, steps: int, samples: int) -> str:
    """Markdown with a YAML header. `prompt_messages`: one training row's prompt (system + user messages), shown
    as the way to prompt the model; `system_prompts`: {system prompt: rows} over the training data."""
    base = upstream_base_model(start)
    header = ["---", "library_name: transformers", f"tags: [marco-train, {kind}]"]
    header += [f"base_model: {base}"] if base else []
    system = prompt_messages[0]["content"] if prompt_messages[0]["role"] == "system" else ""
    user = prompt_messages[-1]["content"]
    if len(system_prompts) > 1:
        prompts_note = (f"The training rows use {len(system_prompts)} different system prompts; the most common one "
                        f"({max(system_prompts.values())} of {sum(system_prompts.values())} rows) is shown.")
        system = max(system_prompts, key=system_prompts.get)
    else:
        prompts_note = "Every training row has this system prompt." if system else "The training rows have no " \
                                                                                   "system prompt."
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    body = [
        f"# {name}", "",
        f"Trained by marco-train's `{kind}` stage: {WHAT.get(kind, kind)}; {steps} optimizer steps on {samples} "
        f"training rows.", "",
        f"- Starting checkpoint: `{start}`" + (f" (base model `{base}`)" if base and base != start else ""),
        f"- Data: {data}", "",
        "## Prompt format", "",
        "Chat messages through the tokenizer's chat template, with the assistant generation prompt. "
        + prompts_note, "",
        "System prompt:", "", "```text", system or "(none)", "```", "",
        "The user message is the question, e.g.:", "", "```text", user, "```", "",
        _tag_format(), "",
        "## Usage", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"path = {json.dumps(model_path)}  # or the hub repository it was pushed to",
        "tokenizer = AutoTokenizer.from_pretrained(path)",
        "model = AutoModelForCausalLM.from_pretrained(path)",
        f"messages = {json.dumps(msgs, ensure_ascii=False)}",
        "ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt', "
        "return_dict=True)['input_ids']",
        "out = model.generate(ids, max_new_tokens=512, do_sample=False)",
        "print(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))",
        "```", "",
        "Evaluation results are in the pipeline's eval stage directories, not here.", "",
    ]
    return "\n".join(header + ["---", ""] + body)


def push_model(model_dir: Path, repo_id: str, private: bool = False) -> str:
    """Upload a stage's model directory (weights, tokenizer, README.md card) to the hub model repository `repo_id`
    through huggingface_hub's upload_folder (needs a login: `hf auth login` or HF_TOKEN). Returns the commit URL."""
    from huggingface_hub import HfApi

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: not a saved model directory (no config.json); point at "
                                f"<stage dir>/model of a finished sft or dpo stage")
    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(model_dir), repo_type="model",
                             commit_message=f"Upload {model_dir}")
    return str(getattr(info, "commit_url", info))
