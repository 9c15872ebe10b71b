#!/usr/bin/env bash
# A long study from a pinned copy of the code: a git worktree at this checkout's HEAD, so that
# editing this checkout (or switching its branch) cannot change a study while it runs.
#
#   launch/study.sh [--dry-run] [--background] -- --config configs/studies/x.py --workdir runs/x [--parallel 2]
#
# The first run of a workdir creates the worktree .worktrees/<workdir name>-<commit> and records
# it in WORKDIR/worktree; every later run of that workdir (a resume) runs that worktree again,
# whatever this checkout's HEAD is by then. A new study refuses to start while jtl/ or configs/
# have uncommitted changes or new files: the worktree would not have them. The workdir is taken
# relative to where you are, so the results stay in this checkout's runs/.
#
# --background: nohup, output appended to WORKDIR/study.log, prints the pid. `kill PID` (SIGTERM)
# checkpoints the running cells and exits 75; the same command resumes.
set -euo pipefail

die() { echo "launch/study.sh: error: $1" >&2; exit 2; }

dry_run=0
background=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --background) background=1; shift ;;
    --) shift; break ;;
    *) die "unknown option $1 (put the jtl study arguments after --)" ;;
  esac
done
[[ $# -gt 0 ]] || die "no study arguments (usage: launch/study.sh [--background] -- --config C --workdir W)"

root="$(cd "$(dirname "$0")/.." && pwd)"
python="${JTL_PYTHON:-$root/.venv/bin/python}"
args=("$@")
workdir=""
for i in "${!args[@]}"; do
  case "${args[$i]}" in
    --workdir) workdir="${args[i + 1]:-}"; args[i + 1]="$(realpath -m -- "$workdir")" ;;
    --workdir=*) workdir="${args[i]#--workdir=}"; args[i]="--workdir=$(realpath -m -- "$workdir")" ;;
  esac
done
[[ -n "$workdir" ]] || die "no --workdir (the worktree is recorded in it, for resuming)"
workdir="$(realpath -m -- "$workdir")"
record="$workdir/worktree"

if [[ -f "$record" ]]; then  # a resume: the code the study started with
  read -r commit tree < "$record"
  [[ -d "$tree" ]] || die "$tree, the worktree $workdir ran from, is gone (restore it: git -C $root worktree add --detach $tree $commit)"
else
  git -C "$root" rev-parse --git-dir > /dev/null 2>&1 || die "$root is not a git checkout (nothing to pin)"
  if [[ -n "$(git -C "$root" status --porcelain -- jtl configs)" ]]; then
    die "jtl/ or configs/ have uncommitted changes or new files (commit them: the study runs the committed code)"
  fi
  commit="$(git -C "$root" rev-parse HEAD)"
  tree="$root/.worktrees/$(basename "$workdir")-${commit:0:10}"
fi

run() {
  if [[ $dry_run -eq 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

if [[ ! -d "$tree" ]]; then
  run git -C "$root" worktree add --detach "$tree" "$commit"
fi
if [[ ! -f "$record" ]]; then
  run mkdir -p "$workdir"
  if [[ $dry_run -eq 1 ]]; then echo "echo $commit $tree > $record"; else echo "$commit $tree" > "$record"; fi
fi
# The worktree's jtl comes first on the path (also for the study's worker processes).
cmd=(env "PYTHONPATH=$tree" "$python" -m jtl.commands.cli study "${args[@]}")
run cd "$tree"
if [[ $background -eq 1 ]]; then
  if [[ $dry_run -eq 1 ]]; then
    printf '%q ' nohup "${cmd[@]}"; echo ">> $workdir/study.log 2>&1 &"
  else
    nohup "${cmd[@]}" >> "$workdir/study.log" 2>&1 &
    echo "launch/study.sh: study running from $tree (pid $!), log $workdir/study.log"
  fi
else
  run "${cmd[@]}"
fi
