"""The main job (`make quickstart`): fine-tune or train from scratch? One converged answer.

Runs `configs/studies/quickstart.py`: pretrains a compact CNN on MNIST digits 0-4 (the source),
then trains on digits 5-9 (a near target) and Fashion-MNIST (a far one) at 10 examples per
class, from scratch, by linear probe and by full fine-tuning, 2 seeds, every arm converged and
tuned over the same LR grid (20 runs), and writes the study report (report.md, a
self-contained report.html, results.csv/json, plots). It prints the verdict per target with its
Welch p-value. Re-running skips finished runs. `--study configs/studies/mnist_source.py:quick`
runs the older equal-step quick study instead.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

DEFAULT_STUDY = "configs/studies/quickstart.py"


def main(argv: Sequence[str] = ()) -> int:
    p = argparse.ArgumentParser(prog="jtl quickstart", description=__doc__)
    p.add_argument("--workdir", default="runs/quickstart")
    p.add_argument("--study", default=DEFAULT_STUDY, help="study config to run")
    args = p.parse_args(list(argv))
    workdir = Path(args.workdir).absolute()
    print(f"[quickstart] report: {workdir / 'report.md'}", flush=True)
    print(f"[quickstart] html:   {workdir / 'report.html'} (self-contained)", flush=True)

    from jtl.runtime.process import setup_process
    from jtl.study import plan_study

    plan = plan_study(args.study, workdir)
    setup_process(plan.batch_sizes(), verbose=False)  # before jax starts: a CPU device per core
    from jtl.data import sources
    from jtl.study import run_study

    for name in sources.OFFLINE_NAMES:
        if name in ("mnist", "digits", "fashion_mnist"):
            sources.fetch(name)
    t0 = time.time()
    out = run_study(
        plan,
        workdir,
        command=f"jtl quickstart --workdir {args.workdir} --study {args.study}",
    )
    md = Path(out["md"]).read_text()
    summary = md.split("## Summary", 1)[-1].split("\n## ", 1)[0].strip()
    print("\n## Summary\n" + summary + "\n", flush=True)
    print(f"[quickstart] done in {(time.time() - t0) / 60:.1f} min. Outputs:")
    for kind in ("md", "html", "csv", "json", "accuracy_plot", "curves_plot"):
        if kind in out:
            print(f"  {kind:14s} {out[kind]}")
    if out.get("failed"):
        print(f"[quickstart] {len(out['failed'])} cell(s) failed: {out['failed']}")
        return 1
    return 0
