#!/usr/bin/env bash
# Are the smoke graph's artifacts byte-identical to those of another revision?
#
#   scripts/smoke_identity.sh BASE_REV [SAMPLES_DIR]
#
# Materializes the whole graph with the smoke profile twice, from this working tree and from a
# `git worktree` of BASE_REV, each into its own temporary root (MINILLM_ROOT, DAGSTER_HOME,
# TF_DIR), both reading the same inputs: an empty sources folder and SAMPLES_DIR (default: the
# shipped dataset/) as the samples. Then prints one sha256 row per artifact (mixes, tokenizer
# files, token shards, each stage's model.safetensors, the HuggingFace export) with same/differs.
# Sidecars, logs and resume states carry timestamps and paths, so they are not compared.
#   VENV_DIR  virtualenv with the project's dependencies (default: .venv in the project)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -ge 1 ] || { sed -n 2,13p "$0" | sed 's/^# \{0,1\}//'; exit 2; }
BASE="$1"
SAMPLES="$(cd "${2:-$ROOT/dataset}" && pwd)"
VENV_DIR="${VENV_DIR:-.venv}"
case "$VENV_DIR" in /*) ;; *) VENV_DIR="$ROOT/$VENV_DIR" ;; esac
WORK="$(mktemp -d)"
cleanup() {
  git -C "$ROOT" worktree remove --force "$WORK/base-tree" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
git -C "$ROOT" worktree add --quiet --detach "$WORK/base-tree" "$BASE"

materialize() {  # TREE ROOT_DIR
  local tree="$1" root="$2"
  mkdir -p "$root/home" "$root/sources"
  local config
  config=$(printf '{"resources": {"minillm": {"config": {"profile": "smoke", "sources_dir": "%s", "samples_dir": "%s"}}}}' \
    "$root/sources" "$SAMPLES")
  (cd "$tree" && PYTHONPATH="$tree" DAGSTER_HOME="$root/home" TF_DIR="$root/tf" \
    MINILLM_ROOT="$root" MINILLM_PROFILE=smoke \
    "$VENV_DIR/bin/dagster" asset materialize -m minillm_assets --select '*' --config-json "$config" \
    >"$root/materialize.log" 2>&1) || {
    echo "smoke_identity: the run in $tree failed; log tail:" >&2
    tail -30 "$root/materialize.log" >&2
    exit 1
  }
}

echo "== materializing the smoke graph: this tree, and $BASE"
materialize "$ROOT" "$WORK/new"
materialize "$WORK/base-tree" "$WORK/base"

artifacts() {  # ROOT_DIR: the artifact files, relative
  (cd "$1" && find data/processed out -type f \
    \( -path 'data/processed/*.jsonl' \
    -o -path 'out/tokenizer/*' \
    -o -path 'out/tokens/*' \
    -o -path 'out/*/model.safetensors' \
    -o -path 'out/hf/*' \) \
    ! -name '*.meta.json' ! -name 'tokenizer_meta.json' ! -name 'minillm_export.json' \
    ! -name '.*' | sort)
}

echo
printf '%-52s %-16s %-16s %s\n' artifact "this tree" "$BASE" result
differ=0
for f in $( (artifacts "$WORK/new"; artifacts "$WORK/base") | sort -u); do
  a=$([ -f "$WORK/new/$f" ] && sha256sum "$WORK/new/$f" | cut -c1-16 || echo missing)
  b=$([ -f "$WORK/base/$f" ] && sha256sum "$WORK/base/$f" | cut -c1-16 || echo missing)
  if [ "$a" = "$b" ]; then r=same; else r=differs; differ=$((differ + 1)); fi
  printf '%-52s %-16s %-16s %s\n' "$f" "$a" "$b" "$r"
done
echo
echo "$differ artifact(s) differ"
# What differs in the text files (JSON, README): usually recorded paths or settings, not data.
norm() {  # the two roots and trees spelled alike, so only real differences show
  sed -e "s#$WORK/base-tree#<tree>#g" -e "s#$ROOT#<tree>#g" \
      -e "s#$WORK/base#<root>#g" -e "s#$WORK/new#<root>#g" "$1"
}
for f in $( (artifacts "$WORK/new"; artifacts "$WORK/base") | sort -u); do
  case "$f" in *.json|*.md) ;; *) continue ;; esac
  [ -f "$WORK/new/$f" ] && [ -f "$WORK/base/$f" ] || continue
  cmp -s "$WORK/new/$f" "$WORK/base/$f" && continue
  echo "== $f ($BASE <, this tree >)"
  if diff -q <(norm "$WORK/base/$f") <(norm "$WORK/new/$f") >/dev/null; then
    echo "   only the roots' own paths differ (the two runs write under different roots)"
  else
    diff <(norm "$WORK/base/$f") <(norm "$WORK/new/$f") | head -20 || true
  fi
done
