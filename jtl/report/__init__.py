"""Study report: should I fine-tune a pretrained network or train from scratch, and at what cost?

Input is the study description and one row per finished cell (one training run) from the study
runner; output is `report.md`, a self-contained `report.html` (PNGs inlined as data URIs),
`results.csv` (one row per cell), `results.json` (everything computed here) and the PNGs.

Everything in the report is derived from the rows: accuracy tables (mean ± std over seeds and
folds), the size from which scratch catches up with transfer (crossover), negative-transfer and
overfitting flags, learning curves (is scratch still improving? how big is the fine-tune head
start?), per-arm cost, transferability scores vs measured gain, and a generated summary per
target. Accuracies are fractions in the data and shown as percentages; gaps are in points.

The arm(s) with strategy "scratch" (source "none") are the baseline; every other arm transfers.

Verdicts come only from arms that converged: a cell on an equal-step budget, or one that hit its
`max_epochs` cap still improving, turns every verdict resting on it into "inconclusive: ARM not
converged at SIZE (raise max_epochs)" or "equal-step budget, not converged" (`convergence`).
Swept cells carry their chosen hyperparameters, grid spread and tuning cost (Tuning, Cost).

Modules, imports one way: `aggregate` (reduce cells, lookups, cost per arm) <- `convergence`
(which aggregates may carry a verdict) <- `analysis`
(crossover, negative transfer, overfitting), `curves`, `advisor` <- `document` (Markdown/HTML
writer, formatting, accuracy table), `summary`, `plots` <- `sections` <- `build`.
"""

from jtl.report.advisor import SCORES, advise_vs_gain, spearman
from jtl.report.aggregate import (
    SCRATCH,
    aggregate,
    arms_of,
    cost_table,
    is_scratch,
    sizes_of,
    targets_of,
)
from jtl.report.analysis import (
    best_curves,
    crossover,
    crossover_by_target,
    detect_overfitting,
    negative_transfer,
    overfitting_flags,
    welch_p_less,
    welch_p_two_sided,
)
from jtl.report.build import CSV_FIELDS, build_report, write_csv
from jtl.report.curves import learning_curves, mean_curve, still_improving
from jtl.report.document import accuracy_table
from jtl.report.plots import plot_accuracy, plot_learning_curves
from jtl.report.summary import summarize

__all__ = [
    "CSV_FIELDS",
    "SCORES",
    "SCRATCH",
    "accuracy_table",
    "advise_vs_gain",
    "aggregate",
    "arms_of",
    "best_curves",
    "build_report",
    "cost_table",
    "crossover",
    "crossover_by_target",
    "detect_overfitting",
    "is_scratch",
    "learning_curves",
    "mean_curve",
    "negative_transfer",
    "overfitting_flags",
    "plot_accuracy",
    "plot_learning_curves",
    "sizes_of",
    "spearman",
    "still_improving",
    "summarize",
    "targets_of",
    "welch_p_less",
    "welch_p_two_sided",
    "write_csv",
]
