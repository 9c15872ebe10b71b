"""Studies: the fine-tune-vs-scratch grid, run cell by cell, resumable, then one report.

| module | what |
|---|---|
| `grid` | the study config (`load_study`, `validate`), its cells (`expand`), `plan_study` |
| `budget` | equal-step or converged budgets per cell (`budget_overrides`) |
| `sweep` | the equal tuning grid per arm, chosen on validation only |
| `run` | running cells (in process, `--parallel`, `--cell`), sources, `run_study` |
| `results` | rows of finished cells for the report, diverged cells, advisor scores |

Study configs start from `study_defaults()`; `jtl study` calls `run_study(plan_study(...))`.
"""

from jtl.study.grid import (
    SOURCE_ARG_KINDS,
    Cell,
    StudyError,
    StudyPlan,
    batch_sizes,
    expand,
    load_study,
    plan_study,
    size_label,
    source_dir,
    study_defaults,
    validate,
)
from jtl.study.results import advise_scores, collect, diverged_cells
from jtl.study.run import (
    StudyClock,
    is_finished,
    machine_description,
    prepare_sources,
    record_study,
    run_cells,
    run_study,
    run_train,
    write_cells_file,
)

__all__ = [
    "SOURCE_ARG_KINDS",
    "Cell",
    "StudyClock",
    "StudyError",
    "StudyPlan",
    "advise_scores",
    "batch_sizes",
    "collect",
    "diverged_cells",
    "expand",
    "is_finished",
    "load_study",
    "machine_description",
    "plan_study",
    "prepare_sources",
    "record_study",
    "run_cells",
    "run_study",
    "run_train",
    "size_label",
    "source_dir",
    "study_defaults",
    "validate",
    "write_cells_file",
]
