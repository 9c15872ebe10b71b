"""Which code ran: the git commit of jtl's checkout ("+dirty" with uncommitted changes or new
files under jtl/ or configs/), else the installed package's version.

Why: a study's fingerprint pins its config, not the code that trains it. A long study resumed
after the code moved on mixes two versions in one table; recording the version per invocation
lets the study warn when that happens and the report say which versions made its rows.
"""

from __future__ import annotations

import functools
import os
import subprocess
from importlib import metadata
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]  # the checkout holding jtl/, when run from one


def _git(*args: str) -> str | None:
    # No index lock (a study's workers and a `git commit` may run at once); the caller's
    # GIT_* variables (a hook's GIT_DIR, GIT_INDEX_FILE) would point it at another repository.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    cmd = ["git", "--no-optional-locks", "-C", str(_ROOT), *args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.cache
def code_version() -> str:
    """'git:<commit>[+dirty]' from a checkout, 'jtl <version>' from an install, or 'unknown'."""
    # Only a checkout whose top is jtl's own root: an installed copy inside some other
    # repository (a venv in a project) is not that repository's commit.
    if _git("rev-parse", "--show-toplevel") == str(_ROOT) and (commit := _git("rev-parse", "HEAD")):
        changed = _git("status", "--porcelain", "--", "jtl", "configs")  # new modules count
        return f"git:{commit}" + ("+dirty" if changed else "")
    try:
        return f"jtl {metadata.version('jtl')}"
    except metadata.PackageNotFoundError:
        return "unknown"
