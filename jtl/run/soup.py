"""Model soups (Wortsman et al. 2022): one model from the averaged weights of several fine-tuned
runs that share a source, an architecture and a validation split (e.g. one learning-rate sweep).

Why a barrier check first: averaging two networks only makes sense when the straight line
between them stays in one low-loss basin (linear mode connectivity, Frankle et al. 2020).
`barrier` measures the loss and the error on that line at `BARRIER_POINTS` points, above the
chord between the end points. A uniform soup across an error barrier above `MAX_ERROR_BARRIER`
is refused (Frankle et al. call a pair stable within 2 points); the greedy soup needs no such
rule, since it adds a run only where validation accuracy does not drop.

Averaging is leaf by leaf in float64. A leaf that is the same in every member (a frozen block,
the base of PEFT runs) is kept bit for bit, so only what trained is averaged and a soup of
identical runs is that run. LoRA factors are averaged as factors, then merged (what the soup
of the trainable subtrees means); adapter runs cannot be merged into the base and are refused.

The soup is a run-like directory: `checkpoints/` + `import.json` (read by `jtl predict`,
`--config.init.checkpoint` and study sources), summary.json (validation, test, calibration and
`eval_shifts`, with the temperature fitted on validation) and the recipe in its `soup` field.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_collections as mlc
import numpy as np

from jtl.evaluation import calibration, run_summary
from jtl.models import peft
from jtl.run.train import WeightsEvaluator, evaluate_shifts, kept_arrays
from jtl.runtime.errors import MissingFileError, UserError
from jtl.weights import checkpoint as ckpt
from jtl.weights import slim_checkpoint, source_model

BARRIER_POINTS = 11  # alpha = 0, 0.1, ..., 1 on the line between two members
MAX_ERROR_BARRIER = 0.02  # accuracy points (as a fraction) above the chord: Frankle et al. 2020
# What decides a run's validation split (jtl.data.target.TargetData): members must agree.
SPLIT_KEYS = (
    "dataset", "data_dir", "val_fraction", "data_seed", "train_per_class", "train_fraction",
    "num_folds", "fold", "image_size", "channels", "input_scale",
)  # fmt: skip


@dataclass
class Member:
    """One run to soup: its config, its weights (PEFT bases filled in, LoRA merged) and where.

    LoRA runs are souped as the models they are, W + s * b @ a: the average of merged weights
    (Wortsman et al.'s soup of the fine-tuned models), not of the factors, whose products'
    average is another model."""

    path: Path
    config: dict[str, Any]
    variables: dict[str, Any]
    base: dict[str, Any] | None  # a PEFT run's {"path", "sha256"}


def load_member(path: str | Path, base: str | None = None) -> Member:
    """A finished run's weights; `base`: where a PEFT run's base moved to (sha256-checked)."""
    run = Path(path).absolute()
    if not (run / "config.json").exists() or not (run / "summary.json").exists():
        raise MissingFileError(
            f"{run} is not a finished run workdir (no config.json / summary.json)",
            "pass the --workdir of finished `jtl train` runs",
        )
    variables, _, meta = slim_checkpoint.read_run_variables(run, base)
    config = json.loads((run / "config.json").read_text())
    if peft.ADAPTER not in variables["params"]:  # adapter runs are refused by check_compatible
        variables = merged(config, variables)
    return Member(run, config, variables, meta.get(slim_checkpoint.BASE_KEY))


def check_compatible(members: Sequence[Member]) -> None:
    """One line naming the first thing two members disagree on (they cannot be souped)."""
    if len(members) < 2:
        raise UserError("a soup needs at least two runs", "pass two or more run workdirs")
    first = members[0]
    for m in members[1:]:
        for what, a, b in (
            ("model", first.config["model"], m.config["model"]),
            ("source (init.checkpoint)", _source(first), _source(m)),
            *((f"split ({k})", first.config.get(k), m.config.get(k)) for k in SPLIT_KEYS),
        ):
            if a != b:
                raise UserError(
                    f"cannot soup {first.path} and {m.path}: different {what} ({a!r} vs {b!r})",
                    "soup runs of one sweep: the same source, model and data split",
                )
        shapes = (_shapes(first.variables), _shapes(m.variables))
        if shapes[0] != shapes[1]:
            raise UserError(
                f"cannot soup {first.path} and {m.path}: their parameter trees differ",
                "soup runs of the same strategy and architecture",
            )
    if any(peft.ADAPTER in m.variables["params"] for m in members):
        raise UserError(
            "cannot soup adapter runs: adapters add layers the base model does not have",
            "soup lora, bitfit, norm_only or fine-tuned runs",
        )


def _source(m: Member) -> str:
    """A PEFT run's base by content; otherwise `init.checkpoint` as the sweep recorded it."""
    if m.base:
        return f"sha256:{m.base['sha256']}"
    return str(m.config.get("init", {}).get("checkpoint") or "")


def _shapes(variables: dict[str, Any]) -> dict[str, tuple]:
    return {k: np.shape(v) for k, v in ckpt.flatten(variables).items()}


def average(trees: Sequence[dict[str, Any]], weights: Sequence[float] | None = None) -> dict:
    """The weighted mean of `trees` leaf by leaf (float64, cast back); a leaf equal in every
    tree is returned as is, bit for bit."""
    weights = np.full(len(trees), 1.0 / len(trees)) if weights is None else np.asarray(weights)
    flats = [ckpt.flatten(t) for t in trees]
    out = {}
    for key in flats[0]:
        leaves = [np.asarray(f[key]) for f in flats]
        if all(np.array_equal(leaves[0], x) for x in leaves[1:]):
            out[key] = leaves[0]
        else:
            mean = sum(w * x.astype(np.float64) for w, x in zip(weights, leaves, strict=True))
            out[key] = np.asarray(mean, dtype=leaves[0].dtype)
    return ckpt.unflatten(out)


def _evaluator(member: Member, eval_test: bool | None) -> WeightsEvaluator:
    """The members' evaluation (train.WeightsEvaluator on the first member's target)."""
    config = mlc.ConfigDict(member.config)
    if eval_test is not None:
        config.eval_test = eval_test
    return WeightsEvaluator(config)


def merged(config: mlc.ConfigDict | dict, variables: dict) -> dict:
    """The base architecture's variables (LoRA factors merged), as `jtl export --merge`."""
    out = peft.merged_variables(dict(config), variables)
    return out if out.get("batch_stats") else {"params": out["params"]}


def barrier(
    evaluate: Callable[[dict], dict], a: dict, b: dict, points: int = BARRIER_POINTS
) -> dict[str, Any]:
    """Loss and error on the line (1 - t) a + t b, and their heights above the chord."""
    ts = np.linspace(0.0, 1.0, points)
    rows = [evaluate(average([a, b], [1.0 - t, t])) for t in ts]
    loss = np.array([r["loss"] for r in rows])
    err = 1.0 - np.array([r["accuracy"] for r in rows])
    chord = lambda y: (1.0 - ts) * y[0] + ts * y[-1]  # noqa: E731
    return {
        "alphas": [float(t) for t in ts],
        "val_loss": [float(x) for x in loss],
        "val_accuracy": [float(1.0 - x) for x in err],
        "loss_barrier": float(max(np.max(loss - chord(loss)), 0.0)),
        "error_barrier": float(max(np.max(err - chord(err)), 0.0)),
    }


def greedy(
    evaluate: Callable[[dict], dict],
    members: Sequence[Member],
    order: Sequence[int],
    best: float,
):
    """Wortsman et al.'s greedy soup: in order of validation accuracy, keep a run only where
    the soup's validation accuracy does not drop below `best` (the first run's, then the
    soup's). Returns (indices kept, accuracy per try)."""
    kept = [order[0]]
    tries = []
    for i in order[1:]:
        acc = evaluate(average([members[j].variables for j in [*kept, i]]))["accuracy"]
        tries.append({"run": str(members[i].path), "val_accuracy": acc, "kept": acc >= best})
        if acc >= best:
            kept, best = [*kept, i], acc
    return kept, tries


def make_soup(
    runs: Sequence[str | Path],
    out: str | Path,
    kind: str = "greedy",
    max_error_barrier: float = MAX_ERROR_BARRIER,
    log: Callable[[str], None] = print,
    eval_test: bool | None = None,
    base: str | None = None,
) -> dict[str, Any]:
    """Builds a `kind` ("greedy" or "uniform") soup of `runs` into the new directory `out`;
    returns its summary. `eval_test`: evaluate the soup on test (default: as the runs did; a
    study's sweep trials did not, the study evaluates the soup once it is built). `base`: the
    PEFT members' base where it moved to (checked by sha256, as `jtl predict --base`)."""
    if kind not in ("greedy", "uniform"):
        raise UserError(f"soup kind {kind!r} is unknown", "use greedy or uniform")
    out = Path(out).absolute()
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; nothing was written", "choose a new --out")
    t0 = time.time()
    members = [load_member(r, base) for r in runs]
    check_compatible(members)
    evaluate = _evaluator(members[0], eval_test)
    solo = [evaluate(m.variables)["accuracy"] for m in members]
    order = [int(i) for i in np.argsort(-np.asarray(solo), kind="stable")]
    best = members[order[0]].variables
    barriers = []
    for i in order[1:]:
        b = barrier(evaluate, best, members[i].variables)
        barriers.append({"run": str(members[i].path), **b})
        log(
            f"barrier {members[order[0]].path.name} -> {members[i].path.name}: loss "
            f"{b['loss_barrier']:.4f}, error {100 * b['error_barrier']:.2f} points"
        )
    worst = max(b["error_barrier"] for b in barriers)
    if kind == "uniform":
        if worst > max_error_barrier:
            raise UserError(
                f"a uniform soup across an error barrier of {100 * worst:.1f} points (above "
                f"{100 * max_error_barrier:.1f}) averages models from different basins",
                "use --kind greedy, or --max_barrier to soup anyway",
            )
        kept, tries = list(range(len(members))), []
    else:
        kept, tries = greedy(evaluate, members, order, solo[order[0]])
    soup = average([members[i].variables for i in kept])
    summary = _summary(evaluate, members, soup, kind, time.time() - t0)
    summary["soup"] = {
        "kind": kind,
        "runs": [str(m.path) for m in members],
        "val_accuracy": dict(zip([str(m.path) for m in members], solo, strict=True)),
        "kept": [str(members[i].path) for i in kept],
        "greedy_tries": tries,
        "barriers": barriers,
        "max_error_barrier": max_error_barrier,
    }
    _write(out, members[0], soup, summary)
    return summary


def _summary(
    evaluate: WeightsEvaluator, members: Sequence[Member], soup: dict, kind: str, seconds: float
) -> dict[str, Any]:
    """summary.json fields of the soup: accuracy, loss, calibration and shifts."""
    first = run_summary.read(members[0].path) or {}
    splits = ["val"] + (["test"] if evaluate.config.get("eval_test", True) else [])
    kept: dict[str, list] = {s: [] for s in splits}
    final = {s: evaluate(soup, s, kept[s]) for s in splits}
    fields = calibration.summary_fields({s: kept_arrays(kept[s]) for s in splits})
    temperature = float(fields.get("temperature", 1.0))
    shifts = evaluate_shifts(evaluate, soup, evaluate.data, temperature)
    return {
        **{
            k: first[k]
            for k in ("dataset", "data_transforms", "seed", "train_examples")
            if k in first
        },  # fmt: skip
        "model": first.get("model", evaluate.config.model.name),
        "strategy": f"soup:{kind}",
        "num_classes": evaluate.data.num_classes,
        "test_accuracy": final.get("test", {}).get("accuracy"),
        "test_loss": final.get("test", {}).get("loss"),
        "val_accuracy": final["val"]["accuracy"],
        "val_loss": final["val"]["loss"],
        **fields,
        **({"shifts": shifts} if shifts else {}),
        "steps_run": 0,
        "diverged": False,
        "wall_time_s": seconds,
    }


def _write(out: Path, first: Member, variables: dict, summary: dict[str, Any]) -> None:
    """The soup's weights as a `jtl import`-style directory, then its summary.json."""
    from jtl.weights.export import import_meta

    meta = import_meta(
        source_model.describe(first.path),
        strategy=summary["strategy"],
        soup_of=summary["soup"]["kept"],
    )
    ckpt.save_variables(out, variables, meta)
    tmp = out / "summary.json.tmp"
    tmp.write_text(run_summary.dumps(summary))
    tmp.replace(out / "summary.json")
