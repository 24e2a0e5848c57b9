"""Command lines of the launchers: `launchers/pipeline.py` runs the DAG, `launchers/<kind>.py` one stage.

A problem the user can fix — config, data, a file or the OS, a stage that cannot start or did not finish, a
lost rank of a multi-rank job — is printed as one line, `error: <what is wrong>; <what to do>`, and the exit
code is 2. `--traceback` (or MARCO_TRACEBACK=1) shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager

from .config import ConfigError, StageError
from .io import DataError

TRACEBACK_ENV = "MARCO_TRACEBACK"


def _parser(prog: str, doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=doc)
    p.add_argument("--config", required=True, help="pipeline YAML, e.g. configs/demo.yaml")
    p.add_argument("--traceback", action="store_true",
                   help=f"on an error, show the full traceback (also: {TRACEBACK_ENV}=1)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. stages.dpo.beta=0.2 (before or after flags)")
    return p


def _parse(p: argparse.ArgumentParser, argv):
    return p.parse_intermixed_args(argv)  # `--until sft key=value` as well as `key=value --until sft`


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _os_error(e: OSError) -> str:
    if e.filename and e.strerror:  # a raw OS error: say which file and what to check
        return f"{e.filename}: {e.strerror} (check the path, its permissions and free disk space)"
    return _one_line(e) or type(e).__name__


@contextmanager
def user_errors(show_traceback: bool = False):
    """Turn the errors a user can fix into one line on stderr and exit code 2 (see the module docstring)."""
    show = show_traceback or os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0")
    try:
        yield
    except (ConfigError, DataError, StageError, OSError) as e:
        if show:
            raise
        _fail(_os_error(e) if isinstance(e, OSError) else _one_line(e))
    except Exception as e:
        from . import dist

        message = None if show else dist.failure_message(e)  # a lost rank of a multi-rank job, named
        if message is None:
            raise
        _fail(message)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def pipeline_main(argv=None) -> None:
    from .pipeline import build_plan, run_plan

    p = _parser("launchers/pipeline.py", "Run the whole DAG (finished stages are cached).")
    p.add_argument("--from", dest="start", help="re-run this stage and everything downstream of it")
    p.add_argument("--until", help="stop after this stage (runs only what it needs)")
    p.add_argument("--force", action="append", default=[], metavar="NAME", help="re-run this stage (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (what runs, what is cached, why)")
    args = _parse(p, argv)
    with user_errors(args.traceback):
        plan = build_plan(args.config, args.overrides)
        results = run_plan(plan, start=args.start, until=args.until, force=args.force, dry_run=args.dry_run)
    if not args.dry_run:
        from .report import print_report

        print_report(plan, results)


def ablate_main(argv=None) -> None:
    """Run an ablation grid (one DAG of named variants) and write its table as markdown, CSV and a W&B table;
    the config's `tables:` (eval/tables.py) also as tables.md / tables.json, with paired intervals."""
    from . import report
    from .eval.tables import render_tables, table_specs
    from .io import atomic_write_json, atomic_write_text
    from .pipeline import build_plan, equivalent_stages, run_plan
    from .tracking import Tracker

    p = _parser("launchers/ablate.py", ablate_main.__doc__)
    p.add_argument("--dry-run", action="store_true", help="print the plan and the equivalence warnings only")
    args = _parse(p, argv)
    with user_errors(args.traceback):
        plan = build_plan(args.config, args.overrides)
        specs = table_specs(plan)  # checked before any work
        for names in equivalent_stages(plan):
            print(f"warning: stages {', '.join(names)} reduce to the same computation (same inputs and an "
                  f"equivalent config); their rows will match", file=sys.stderr)
        results = run_plan(plan, dry_run=args.dry_run)
    if args.dry_run:
        return
    header, rows, raw = report.table(plan, results)
    out = plan.experiment_dir
    atomic_write_text(out / "ablation.md", report.markdown(header, rows))
    atomic_write_text(out / "ablation.csv", report.csv_text(header, raw))
    tracker = Tracker(out / "_ablation", experiment=plan.root.experiment, name="ablation", kind="ablation",
                      config={"config_file": args.config, "overrides": args.overrides},
                      project=plan.root.wandb.project, entity=plan.root.wandb.entity, mode=plan.root.wandb.mode)
    tracker.table("ablation", header, rows)
    tracker.finish()
    print("\naccuracy (no-answer rate)\n" + report.markdown(header, rows) + f"\nwritten to {out}/ablation.md, .csv")
    if specs:
        with user_errors(args.traceback):
            text, data = render_tables(plan, specs)
        atomic_write_text(out / "tables.md", text)
        atomic_write_json(out / "tables.json", data)
        print("\n" + text + f"\nwritten to {out}/tables.md, .json")


def stage_main(kind: str | None, argv=None) -> None:
    """`torchrun launchers/<kind>.py --config X [--stage NAME] key=value ...`: one stage instance.

    kind=None (launchers/stage.py) runs the instance named by --stage, whatever its kind.
    """
    from . import dist
    from .config import check_world_batch
    from .pipeline import build_plan, execute_stage

    p = _parser(f"launchers/{kind or 'stage'}.py", f"Run one {kind or ''} stage instance of a pipeline config.")
    p.add_argument("--stage", required=kind is None, help="instance name (needed when the config has several)")
    p.add_argument("--force", action="store_true", help="re-run even if finished")
    args = _parse(p, argv)
    with user_errors(args.traceback):
        plan = build_plan(args.config, args.overrides)
        instance = plan.instance_of(kind, args.stage)
        if kind is not None and instance.kind != kind:
            raise ConfigError(f"{args.config}: stage '{instance.name}' is a '{instance.kind}' stage; "
                              f"use launchers/{instance.kind}.py")
        # torchrun may start another world size than the config's nproc_per_node x nnodes: check the batch again
        check_world_batch(instance.cfg, f"stages.{instance.name}", lambda key: args.config, dist.world_size())
        execute_stage(plan, instance, force=args.force)


def push_main(argv=None) -> None:
    """`launchers/push_to_hub.py <stage dir> --repo NAME [--private]`: upload a finished stage's output to the
    Hugging Face hub — a split stage's exported data (a dataset repo, configs sft and pairs, via datasets'
    push_to_hub) or an sft/dpo stage's model directory with its model card (a model repo, via huggingface_hub's
    upload_folder). Needs a login (`hf auth login` or HF_TOKEN)."""
    from pathlib import Path

    p = argparse.ArgumentParser(prog="launchers/push_to_hub.py", description=push_main.__doc__)
    p.add_argument("stage_dir", help="a finished stage directory, e.g. runs/demo/split-<fingerprint>")
    p.add_argument("--repo", required=True, help="hub repository id, e.g. your-name/marco-toy-pairs")
    p.add_argument("--private", action="store_true", help="create the repository private")
    args = p.parse_args(argv)
    stage = Path(args.stage_dir)
    if not (stage / "_DONE.json").is_file():
        _fail(f"{stage}: not a finished stage directory (no _DONE.json)")
    if (stage / "export").is_dir():
        from .data.export import push_split

        with user_errors():
            print(f"pushed configs {', '.join(push_split(stage, args.repo, args.private))} to dataset {args.repo}")
    elif (stage / "model").is_dir():
        from .train.model_card import push_model

        with user_errors():
            url = push_model(stage / "model", args.repo, args.private)
        print(f"pushed {stage / 'model'} to model {args.repo}: {url}")
    else:
        _fail(f"{stage}: neither export/ (a split stage) nor model/ (an sft or dpo stage) to push")
