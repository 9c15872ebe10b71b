"""A study's cells on persistent workers against one fresh `jtl train` process per cell.

    .venv/bin/python bench/study_workers.py [--spec SPEC] [--parallel 2] [--cells 24]

Runs the first `--cells` cells of a study (default: the transfer benchmark's smoke grid,
finetune_full and lp_ft: the benchmark's commonest cells) twice, side by side in one run on
the same sources: once as `jtl study --parallel N` runs them now (jtl.study.workers), once the
way it did before (a new process per cell, N at a time). Prints each way's wall time, the
ratio, the per-cell saving, and whether every cell's test accuracy agrees. Run it on an idle
machine: it measures wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jtl import study as study_lib
from jtl.study import run as run_lib

SPEC = "configs/studies/transfer_bench.py:small=1,arms=finetune_full+lp_ft"


def _fresh_processes(cells: list, root: Path, parallel: int) -> None:
    """The previous runner: one `jtl train` process per cell, `parallel` at a time."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    jtl = f"{shlex.quote(sys.executable)} -m jtl.commands.cli"
    queue, running = list(cells), []
    while queue or running:
        while queue and len(running) < parallel:
            cell = queue.pop(0)
            cell.workdir(root).mkdir(parents=True, exist_ok=True)
            log = (cell.workdir(root) / "train.log").open("a")
            cmd = [*cell.command(root, jtl), "--config.progress=False"]
            running.append((subprocess.Popen(cmd, stdout=log, stderr=log, env=env), log))
        time.sleep(0.05)
        for item in [r for r in running if r[0].poll() is not None]:
            item[1].close()
            running.remove(item)
            if item[0].returncode:
                raise SystemExit(f"a cell failed (exit {item[0].returncode})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default=SPEC)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--cells", type=int, default=24)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        roots = {"workers": Path(tmp) / "workers", "fresh": Path(tmp) / "fresh"}
        plan = study_lib.plan_study(args.spec, roots["workers"])
        study_lib.prepare_sources(plan.study, roots["workers"])  # both ways init from these
        cells = [c for c in plan.cells if not c.tuned_by][: args.cells]
        seconds = {}
        for way in ("fresh", "workers"):
            t = time.time()
            if way == "fresh":
                _fresh_processes(cells, roots[way], args.parallel)
            else:
                failed = run_lib._run_parallel(cells, roots[way], args.parallel)
                if failed:
                    raise SystemExit(f"failed: {failed}")
            seconds[way] = time.time() - t
        acc = {
            way: [
                json.loads((c.workdir(r) / "summary.json").read_text())["test_accuracy"]
                for c in cells
            ]
            for way, r in roots.items()
        }
    n = len(cells)
    print(f"{n} cells of {args.spec}, {args.parallel} at a time")
    for way in ("fresh", "workers"):
        print(
            f"  {way:8s} {seconds[way]:7.1f} s  ({seconds[way] / n * args.parallel:.1f} s a cell)"
        )
    saved = (seconds["fresh"] - seconds["workers"]) / n * args.parallel
    print(f"  speed-up {seconds['fresh'] / seconds['workers']:.2f}x, {saved:.1f} s saved a cell")
    print(f"  test accuracy identical in every cell: {acc['fresh'] == acc['workers']}")


if __name__ == "__main__":
    main()
