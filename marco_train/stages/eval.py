"""Stage `eval`: generate for a checkpoint on a task's problems with the shared prompt contract; score them.

Writes samples.jsonl (one line per sample) and metrics.json (accuracy, no-answer rate, truncation rate,
no-answer rate among finished outputs, format rate, the whole-response fallback's accuracy and no-answer rate,
mean response length, Test@N when sampling; definitions in marco_train/eval/metrics.py).

`max_new_tokens: 0` (the default) is the task's own budget (`Task.max_new_tokens`: toy 479, the toy model's
512 positions minus its longest prompt; gsm8k, blocksworld, multi_if 1024; math500 2048; aime 4096), so a
truncated output is one that ran past what the task needs, not one cut by a small default.

`decoding: mcts` decodes by test-time search instead of sampling (the paper's "+ MCTS decoding"; the search
without ground truth, `search:` its keys, eval/mcts_decoding.py): one record per rollout, `search.rollouts` per
problem, Test@N over the first N rollouts. With several samples or rollouts per problem, metrics.json also has
tokens@N (the tokens generated for the first N of them, mean per problem) for N in test_at.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List

from .. import dist
from ..config import ConfigError, ModelConfig, StageConfig, at_least, checked, path_field
from ..engines import ENGINES, engine_from_config
from ..engines.base import check_prompts_fit
from ..eval.generate import gather_records, sample
from ..eval.mcts_decoding import DecodingSearch, check_search, search_decode, tokens_at
from ..eval.metrics import score_samples, summarize
from ..io import atomic_write_json, atomic_write_text
from ..logs import progress
from ..models import model_dir
from ..tasks import check_problems_source, check_task, get_task, select_problems

KIND = "eval"
INPUTS = {"model": "model.name_or_path"}  # the checkpoint to evaluate
EXTRA_RUNTIME_KEYS = ("variant", "engine_options", "wandb_samples")
# the columns of the W&B samples table (samples.jsonl has them all)
SAMPLE_COLUMNS = ("id", "question", "reference", "predicted", "correct", "no_answer", "truncated", "format_ok",
                  "response_tokens", "response")
READS = {"model": ("model",)}  # what it reads in its input's directory (checked before it runs)
DECODINGS = ("sample", "mcts")


@dataclass
class Config(StageConfig):
    kind: str = KIND
    variant: str = ""  # row label in result tables (default: the evaluated model's stage name)
    task: str = checked("toy", check_task)
    # A problem file (ours, or the dataset's own format: .jsonl/.json/.parquet/.csv) or a hub dataset name
    # ("openai/gsm8k:main"); "" = the task's default dataset.
    problems_file: str = path_field("mcts_data/problems/toy_heldout.jsonl", check=check_problems_source)
    split: str = ""  # dataset split when loading by name ("" = the task's default)
    num_problems: int = at_least(0, default=200, hint="0 = all")
    first_problem: int = at_least(0, default=0)  # skip the source's first N problems (0-based start)
    max_new_tokens: int = at_least(0, default=0, hint="0 = the task's budget, Task.max_new_tokens")  # docstring
    engine: str = "hf"  # hf | vllm (marco_train/engines; vllm runs from its own venv, see the README)
    # keyword options of the engine: vllm: tensor_parallel_size, gpu_memory_utilization, max_num_seqs, ...
    engine_options: Dict[str, Any] = field(default_factory=dict)
    # rows the hf engine decodes at once (vllm schedules its own: engine_options.max_num_seqs)
    batch_size: int = at_least(1, default=64)
    samples_per_problem: int = at_least(1, default=1)  # >1 samples at `temperature` and reports Test@N for N in test_at
    temperature: float = at_least(0.0, default=1.0)
    test_at: List[int] = at_least(1, default_factory=lambda: [1])
    decoding: str = "sample"  # sample | mcts (test-time search with the `search` keys; docstring)
    search: DecodingSearch = field(default_factory=DecodingSearch)
    model: ModelConfig = field(default_factory=ModelConfig)
    wandb_samples: int = at_least(0, default=100, hint="0 = no table")  # rows of the W&B table eval/samples


def check_config(cfg, prefix: str, where) -> None:
    if cfg.engine not in ENGINES:
        raise ConfigError(f"{where(prefix + '.engine')}: {prefix}.engine '{cfg.engine}' is not one of "
                          f"{', '.join(ENGINES)}")
    if cfg.decoding not in DECODINGS:
        raise ConfigError(f"{where(prefix + '.decoding')}: {prefix}.decoding '{cfg.decoding}' is not one of "
                          f"{', '.join(DECODINGS)}")
    if cfg.decoding == "mcts":
        for key, msg in check_search(cfg.search, "search"):
            raise ConfigError(f"{where(f'{prefix}.{key}')}: {prefix}.{key} {msg}")
        too_many = [n for n in cfg.test_at if n > cfg.search.rollouts]
        if too_many:
            raise ConfigError(f"{where(prefix + '.test_at')}: Test@{too_many[0]} needs search.rollouts >= "
                              f"{too_many[0]} (is {cfg.search.rollouts}); raise it or drop {too_many[0]}")
        return
    too_many = [n for n in cfg.test_at if n > cfg.samples_per_problem]
    if cfg.samples_per_problem > 1 and too_many:
        raise ConfigError(f"{where(prefix + '.test_at')}: Test@{too_many[0]} needs samples_per_problem >= "
                          f"{too_many[0]} (is {cfg.samples_per_problem}); raise it or drop {too_many[0]}")


def run(ctx) -> dict:
    cfg = ctx.cfg
    path = cfg.model.name_or_path or model_dir(ctx.inputs["model"])
    task = get_task(cfg.task)
    problems = select_problems(task, cfg.problems_file, cfg.split, cfg.first_problem, cfg.num_problems)
    engine = engine_from_config(cfg.engine, cfg.engine_options, cfg.model, path, cfg.engine,
                                max_batch_rows=cfg.batch_size)
    check_prompts_fit(engine, task, problems, cfg.problems_file)
    mine = dist.my_share(problems)
    search = cfg.decoding == "mcts"
    k = cfg.search.rollouts if search else cfg.samples_per_problem
    with progress(len(mine), f"{ctx.name}: problems", unit="problems") as bar:
        if search:
            mine_records = search_decode(engine, task, mine, cfg.search, ctx.root.seed, cfg.batch_size, bar)
        else:
            gens = sample(engine, task, mine, k, cfg.max_new_tokens or task.max_new_tokens, cfg.temperature,
                          ctx.root.seed, progress=bar)
            mine_records = score_samples(task, [p for p in mine for _ in range(k)], gens)
    records = gather_records(mine_records, len(problems), k)
    metrics = summarize(records, test_at=cfg.test_at if k > 1 else ())
    if k > 1:
        metrics.update(tokens_at(records, cfg.test_at))
    if dist.is_main():
        atomic_write_text(ctx.out_dir / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        atomic_write_json(ctx.out_dir / "metrics.json", metrics)
        ctx.tracker.log({f"eval/{k}": v for k, v in metrics.items()}, step=0)
        if cfg.wandb_samples:
            ctx.tracker.table("samples", list(SAMPLE_COLUMNS),
                              [[r[c] for c in SAMPLE_COLUMNS] for r in records[:cfg.wandb_samples]])
    finished = metrics["no_answer_rate_finished"]
    ctx.log(f"accuracy {metrics['accuracy']:.1%}  no-answer {metrics['no_answer_rate']:.1%} (among finished "
            f"{'-' if finished is None else f'{finished:.1%}'})  truncated {metrics['truncation_rate']:.1%}  format "
            f"{metrics['format_rate']:.1%}  fallback accuracy {metrics['fallback_accuracy']:.1%}  mean length "
            f"{metrics['mean_response_tokens']:.1f} tokens")
    return {"metrics": metrics, "task": cfg.task}
