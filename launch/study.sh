#!/usr/bin/env bash
# A long study from a pinned copy of the code: a git worktree at this checkout's HEAD, so that
# editing this checkout (or switching its branch) cannot change a study while it runs.
#
#   launch/study.sh [--dry-run] [--background] -- --config configs/studies/x.py --workdir runs/x [--parallel 2]
#
# The first run of a workdir creates the worktree .worktrees/<workdir name>-<commit> and records
# it in WORKDIR/worktree; once the study has started (WORKDIR/study.json), every later run of
# that workdir (a resume) runs that worktree again, whatever this checkout's HEAD is by then. A
# new study refuses to start while jtl/ or configs/ have uncommitted changes or new files: the
# worktree would not have them.
#
# Paths: the workdir and a --config file are taken relative to where you are (results stay in
# this checkout's runs/; a config of this checkout runs as the worktree's committed copy). Other
# paths inside config arguments (`source_dir=...`) resolve in the worktree: give them absolute.
# A finished study's worktree can go: git worktree remove TREE (its path is in WORKDIR/worktree).
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
abs() { realpath -m -s -- "$1"; }  # absolute, symlinks kept (cells record paths as given)
args=("$@")
workdir=""
for i in "${!args[@]}"; do
  case "${args[i]}" in
    --workdir)
      workdir="${args[i + 1]:-}"
      [[ -n "$workdir" ]] || die "--workdir needs a directory"
      args[i + 1]="$(abs "$workdir")" ;;
    --workdir=*)
      workdir="${args[i]#--workdir=}"
      [[ -n "$workdir" ]] || die "--workdir needs a directory"
      args[i]="--workdir=$(abs "$workdir")" ;;
  esac
done
[[ -n "$workdir" ]] || die "no --workdir (the worktree is recorded in it, for resuming)"
workdir="$(abs "$workdir")"
record="$workdir/worktree"

resume=0
if [[ -f "$record" && -f "$workdir/study.json" ]]; then  # a resume: the code it started with
  resume=1
  commit="" tree=""
  read -r commit tree < "$record" || true
  if [[ -z "$commit" || -z "$tree" ]]; then
    die "$record is not 'COMMIT PATH' (move the workdir aside, or write that line back)"
  fi
  if [[ ! -d "$tree" ]]; then
    fix="git -C $(printf %q "$root") worktree prune && git -C $(printf %q "$root") worktree add --detach $(printf %q "$tree") $commit"
    die "$tree, the worktree $workdir ran from, is gone (restore it: $fix)"
  fi
else  # a new study (or one that never started: pinned afresh)
  git -C "$root" rev-parse --git-dir > /dev/null 2>&1 || die "$root is not a git checkout (nothing to pin)"
  if [[ -n "$(git -C "$root" status --porcelain -- jtl configs)" ]]; then
    die "jtl/ or configs/ have uncommitted changes or new files (commit them: the study runs the committed code)"
  fi
  commit="$(git -C "$root" rev-parse HEAD)"
  tree="$root/.worktrees/$(basename "$workdir")-${commit:0:10}"
fi

# A config file of this checkout runs as the worktree's copy (the same path relative to the
# worktree, where the study runs); it must be committed there unchanged. Another existing file
# is passed on absolute (it is not pinned); a name that is not a file (a shipped study's name)
# is left to jtl.
pin_config() {  # VALUE -> the value to pass
  local spec="${1%%:*}" rest="${1#*:}" real rel
  [[ "$1" == *:* ]] && rest=":$rest" || rest=""
  if [[ ! -f "$spec" ]]; then echo "$1"; return; fi
  real="$(realpath -- "$spec")"
  if [[ "$real" != "$(realpath -- "$root")"/* ]]; then echo "$(abs "$spec")$rest"; return; fi
  rel="${real#"$(realpath -- "$root")"/}"
  if ! git -C "$root" cat-file -e "$commit:$rel" 2> /dev/null; then
    die "--config $rel is not in commit ${commit:0:10} (commit it: the study runs the committed copy)"
  fi
  if [[ $resume -eq 0 ]] && ! git -C "$root" diff --quiet "$commit" -- "$rel"; then
    die "--config $rel differs from its committed version (commit it: the study runs the committed copy)"
  fi
  echo "$rel$rest"  # a resume runs the worktree's copy, whatever this checkout's is now
}
for i in "${!args[@]}"; do
  case "${args[i]}" in
    --config) [[ -z "${args[i + 1]:-}" ]] || args[i + 1]="$(pin_config "${args[i + 1]}")" ;;
    --config=*) args[i]="--config=$(pin_config "${args[i]#--config=}")" ;;
  esac
done

run() {
  if [[ $dry_run -eq 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

if [[ ! -d "$tree" ]]; then
  run git -C "$root" worktree add --detach "$tree" "$commit"
fi
run mkdir -p "$workdir"
if [[ $dry_run -eq 1 ]]; then
  echo "echo $commit $(printf %q "$tree") > $(printf %q "$record")"
else
  echo "$commit $tree" > "$record"
fi
echo "launch/study.sh: running from $tree (commit ${commit:0:10})" >&2
# The worktree's jtl comes first on the path (also for the study's worker processes).
cmd=(env "PYTHONPATH=$tree" "$python" -m jtl.commands.cli study "${args[@]}")
run cd "$tree"
if [[ $background -eq 1 ]]; then
  if [[ $dry_run -eq 1 ]]; then
    printf '%q ' nohup "${cmd[@]}"; echo ">> $(printf %q "$workdir/study.log") 2>&1 &"
  else
    nohup "${cmd[@]}" >> "$workdir/study.log" 2>&1 &
    echo "launch/study.sh: pid $!, log $workdir/study.log" >&2
  fi
else
  run "${cmd[@]}"
fi
