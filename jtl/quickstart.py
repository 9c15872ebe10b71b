"""The main job (`make quickstart`): does MNIST pretraining help, and when?

Pretrains a ResNet-20 on MNIST (source), then trains on digits (similar target) and
Fashion-MNIST (dissimilar target) at several training-set sizes, from scratch and by
fine-tuning the MNIST checkpoint with a new head, all with the same step budget and seed.
Writes results.md / results.csv / accuracy_vs_examples.png. Re-running skips finished runs.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from absl import logging

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _size_args(size: str) -> str:
    return "fraction=1.0" if size == "full" else f"per_class={int(size)}"


def run_cell(config_spec: str, workdir: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Trains one run unless its workdir already holds a finished run of the same config."""
    from jtl import config as config_lib
    from jtl.train import train

    config = config_lib.load_config(config_spec, overrides)
    summary_path = workdir / "summary.json"
    cfg_path = workdir / "config.json"
    if summary_path.exists() and cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        if old.get("_fingerprint") == config_lib.fingerprint(config):
            logging.info("Skipping finished run %s", workdir)
            return json.loads(summary_path.read_text())
    return train(config, workdir)


def main(argv: Sequence[str] = ()) -> int:
    p = argparse.ArgumentParser(prog="jtl quickstart", description=__doc__)
    p.add_argument("--workdir", default="runs/quickstart")
    p.add_argument("--targets", default="digits,fashion_mnist")
    p.add_argument("--sizes", default="10,100,full", help="examples per class, or 'full'")
    p.add_argument("--strategies", default="scratch,finetune_full")
    p.add_argument("--pretrain-steps", type=int, default=400)
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per target run")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(list(argv))

    from jtl.cli import _setup_logging
    from jtl.cpu import configure_cpu_devices

    # Before jax starts: one CPU device per core when the batch sizes split evenly.
    configure_cpu_devices([128, 64, 500])
    from jtl.data import sources
    from jtl.report import write_results
    from jtl.train import enable_compilation_cache

    _setup_logging()
    enable_compilation_cache()
    t0 = time.time()
    workdir = Path(args.workdir).absolute()
    targets = [t for t in args.targets.split(",") if t]
    for name in ["mnist", *targets]:
        if name in sources.OFFLINE_NAMES:
            sources.fetch(name)

    source_dir = workdir / "source_mnist"
    src = run_cell(
        f"{CONFIGS / 'mnist_pretrain.py'}:steps={args.pretrain_steps}",
        source_dir,
        ["progress=False"],
    )
    print(
        f"[quickstart] source: MNIST ResNet-20, test accuracy {src['test_accuracy']:.4f}",
        flush=True,
    )

    rows = []
    for target in targets:
        for size in args.sizes.split(","):
            for strategy in args.strategies.split(","):
                init = f",init={source_dir}" if strategy != "scratch" else ""
                spec = (
                    f"{CONFIGS / 'transfer.py'}:target={target},strategy={strategy},"
                    f"{_size_args(size)},steps={args.steps},seed={args.seed}{init}"
                )
                cell = workdir / "cells" / target / f"{strategy}_{size}"
                s = run_cell(spec, cell, ["progress=False"])
                rows.append({**s, "size": size})
                print(
                    f"[quickstart] {target:14s} size={size:>5s} ({s['train_examples']:6d} ex.) "
                    f"{strategy:14s} test acc {s['test_accuracy']:.4f}  "
                    f"({s['wall_time_s']:.0f}s)",
                    flush=True,
                )
    paths = write_results(rows, workdir, "Quickstart: MNIST ResNet-20 -> digits, Fashion-MNIST")
    print(paths["md"].read_text())
    minutes = (time.time() - t0) / 60
    print(f"[quickstart] done in {minutes:.1f} min. Outputs:")
    for kind, path in paths.items():
        print(f"  {kind:5s} {path}")
    return 0
