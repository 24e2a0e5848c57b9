"""Stage `cot`: chain-of-thought fine-tuning on tagged traces written from the task's known solutions.

The real-model counterpart of the toy world's bootstrap stage (and of the paper's Marco-o1-CoT model): before the
search, a checkpoint that cannot yet write the tagged format learns it. Any task whose problems it can solve itself
can write the traces (`Task.solution_steps`; today gsm8k on our templated word problems,
mcts_data/problems/word_*.jsonl, and toy); a task without solutions is refused at plan time. For each problem the
task writes `traces_per_problem` traces (tasks/traces.py): sub_task, one thinking per step, a double_check, the
answer; with probability `error_rate` the last step first goes wrong, the double_check catches it and a reflection
and a thinking_from_scratch lead to the corrected work. Each trace's RNG is seeded from (seed, problem id, trace
number) (engines.base.derive_seed), so a trace does not depend on the others. A problem the task has no solution
for is skipped and counted. The fine-tuning is the sft stage's (train/sft_trainer.py: the prompt contract's
sequences, the loss on the response only, packing, LoRA, DeepSpeed, resume; the same `model`, `training`, `packing`
and `lora` keys).

Dev split: the last `dev_problems` of the problems get no trace; after training the model answers them greedily
(the eval stage's sampling and metrics, at most `dev_max_new_tokens` each) and the summary reports their metrics
(`dev`: accuracy, format rate, ...). Tune this stage, and the ones after it, on those, never on a test set.

Inputs: `model` (the starting checkpoint) unless model.name_or_path names it. Output: <stage dir>/model (as the
sft stage's), traces.jsonl (the written SFT rows: id, question, response, mistake), dev_samples.jsonl.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Optional

from .. import dist
from ..config import ConfigError, ModelConfig, StageConfig, TrainingConfig, at_least, checked, path_field
from ..engines import engine_from_config
from ..engines.base import derive_seed
from ..io import atomic_write_json, atomic_write_text
from ..logs import progress
from ..models import model_dir
from ..tasks import TASK_MODULES, check_problems_source, check_task, get_task, select_problems
from .sft import SftLoraConfig, check_training

KIND = "cot"
INPUTS = {"model": "model.name_or_path"}  # the checkpoint to fine-tune
RESUMABLE = True
READS = {"model": ("model",)}
EXTRA_RUNTIME_KEYS = ("dev_batch_size",)
TRACES_FILE, DEV_SAMPLES_FILE = "traces.jsonl", "dev_samples.jsonl"


def check_trace_task(name: str, section=None) -> Optional[str]:
    """A config field check: a known task that can write traces (Task.can_write_traces)."""
    problem = check_task(name)
    if problem or get_task(name).can_write_traces:
        return problem
    able = [t for t in TASK_MODULES if get_task(t).can_write_traces]
    return (f"task '{name}' has no known solutions to write traces from (Task.solution_steps); tasks that have "
            f"them: {', '.join(able)}")


def check_rate(value: float, section=None) -> Optional[str]:
    return None if 0.0 <= value <= 1.0 else f"{value} is not in [0, 1]"


@dataclass
class Config(StageConfig):
    kind: str = KIND
    task: str = checked("gsm8k", check_trace_task)
    problems_file: str = path_field("mcts_data/problems/word_train.jsonl", check=check_problems_source)
    split: str = ""  # dataset split when the task loads problems by dataset name
    num_problems: int = at_least(0, default=0, hint="0 = all")
    first_problem: int = at_least(0, default=0)  # skip the source's first N problems (0-based start)
    dev_problems: int = at_least(0, default=0, hint="the last N of the problems: no traces, evaluated after training")
    traces_per_problem: int = at_least(1, default=1)
    error_rate: float = checked(0.2, check_rate)  # share of traces with a caught mistake and a corrected retry
    packing: Optional[bool] = None  # as the sft stage's: null = on where exact
    model: ModelConfig = field(default_factory=ModelConfig)  # empty name_or_path = the `model` input's model dir
    training: TrainingConfig = field(default_factory=TrainingConfig)
    lora: SftLoraConfig = field(default_factory=SftLoraConfig)
    dev_max_new_tokens: int = at_least(1, default=256)
    dev_batch_size: int = at_least(1, default=32)  # rows the dev evaluation decodes at once


def check_config(cfg, prefix: str, where) -> None:
    if cfg.num_problems and cfg.dev_problems >= cfg.num_problems:
        raise ConfigError(f"{where(prefix + '.dev_problems')}: {prefix}.dev_problems={cfg.dev_problems} leaves no "
                          f"training problem of num_problems={cfg.num_problems}; lower it or raise num_problems")
    check_training(cfg, prefix, where)


def unread_keys(cfg) -> tuple:
    """Keys this config does not read (kept out of the fingerprint): without dev problems, the dev budget."""
    return () if cfg.dev_problems else ("dev_max_new_tokens",)


def trace_rows(task, problems, per_problem: int, error_rate: float, seed: int) -> tuple[list, int]:
    """(SFT rows {id, question, response, mistake}, problems the task has no solution for)."""
    rows, skipped = [], 0
    for p in problems:
        if task.solution_steps(p.question) is None:
            skipped += 1
            continue
        for j in range(per_problem):
            response = task.write_trace(p.question, random.Random(derive_seed(seed, p.id, "trace", j)), error_rate)
            rows.append({"id": f"{p.id}/{j}", "question": p.question, "response": response,
                         "mistake": "<reflection>" in response})
    return rows, skipped


def dev_metrics(ctx, task, problems, path: str) -> dict:
    """The fine-tuned model's greedy answers to the dev problems, scored as the eval stage scores them."""
    from ..eval.generate import gather_records, sample
    from ..eval.metrics import score_samples, summarize

    cfg = ctx.cfg
    engine = engine_from_config("hf", {}, cfg.model, path, "hf", max_batch_rows=cfg.dev_batch_size)
    mine = dist.my_share(problems)
    with progress(len(mine), f"{ctx.name}: dev problems", unit="problems") as bar:
        gens = sample(engine, task, mine, 1, cfg.dev_max_new_tokens, 1.0, ctx.root.seed, progress=bar)
    records = gather_records(score_samples(task, mine, gens), len(problems), 1)
    if dist.is_main():
        atomic_write_text(ctx.out_dir / DEV_SAMPLES_FILE, "".join(json.dumps(r) + "\n" for r in records))
    return summarize(records)


def run(ctx) -> dict:
    from ..train.sft_trainer import fine_tune

    cfg, where = ctx.cfg, f"stages.{ctx.name}"
    task = get_task(cfg.task)
    problems = select_problems(task, cfg.problems_file, cfg.split, cfg.first_problem, cfg.num_problems)
    if cfg.dev_problems >= len(problems):
        raise ConfigError(f"{where}.dev_problems={cfg.dev_problems} leaves none of the {len(problems)} problems of "
                          f"{cfg.problems_file} to train on; lower it")
    cut = len(problems) - cfg.dev_problems
    train, dev = problems[:cut], problems[cut:]
    rows, skipped = trace_rows(task, train, cfg.traces_per_problem, cfg.error_rate, ctx.root.seed)
    if not rows:
        raise ConfigError(f"{where}.problems_file: task {cfg.task} has a solution for none of the {len(train)} "
                          f"problems of {cfg.problems_file} (Task.solution_steps); point it at problems the task "
                          f"can solve (e.g. mcts_data/problems/word_train.jsonl for gsm8k)")
    traces = ctx.out_dir / TRACES_FILE
    if dist.is_main():
        atomic_write_text(traces, "".join(json.dumps(r) + "\n" for r in rows))
    mistakes = sum(r["mistake"] for r in rows)
    ctx.log(f"{len(rows)} traces of {len(train) - skipped} problems ({mistakes} with a caught mistake and a retry; "
            f"{skipped} problems without a solution skipped); {len(dev)} dev problems held out")
    model_path = cfg.model.name_or_path or str(model_dir(ctx.inputs["model"]))
    described = (f"{len(rows)} tagged traces written from the known solutions of {len(train) - skipped} {cfg.task} "
                 f"problems of `{cfg.problems_file}` ({mistakes} with a caught mistake and a corrected retry)")
    summary = fine_tune(ctx, KIND, rows, task, model_path, str(traces), described)
    summary.update({"task": cfg.task, "traces": len(rows), "with_mistake": mistakes, "skipped": skipped,
                    "dev_problems": len(dev)})
    if dev:
        summary["dev"] = dev_metrics(ctx, task, dev, summary["model"])
        m = summary["dev"]
        ctx.log(f"dev: accuracy {m['accuracy']:.1%}  format {m['format_rate']:.1%}  no-answer "
                f"{m['no_answer_rate']:.1%}  truncated {m['truncation_rate']:.1%}  mean length "
                f"{m['mean_response_tokens']:.1f} tokens")
        if dist.is_main():
            atomic_write_json(ctx.out_dir / "dev_metrics.json", m)
            ctx.tracker.log({f"dev/{k}": v for k, v in m.items()}, step=summary["steps"])
    return summary
