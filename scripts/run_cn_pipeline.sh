#!/usr/bin/env bash
# scripts/run.sh with the environment managed by uv when uv is installed; without uv, the same
# as scripts/run.sh (python3 -m venv + pip). Flags and environment as scripts/run.sh (--help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for arg in "$@"; do
  case "$arg" in
    -h|--help) exec "$ROOT/scripts/run.sh" --help ;;
    --dry-run) dry_run=1 ;;
  esac
done
if ! command -v uv >/dev/null 2>&1; then
  echo "run_cn_pipeline.sh: uv not found: setting up with python3 -m venv and pip (scripts/setup.sh)"
  exec "$ROOT/scripts/run.sh" "$@"
fi
VENV_DIR="${VENV_DIR:-.venv}"
case "$VENV_DIR" in /*) ;; *) VENV_DIR="$ROOT/$VENV_DIR" ;; esac
if [ "${dry_run:-0}" = 1 ]; then
  echo "run_cn_pipeline.sh: would set up $VENV_DIR with uv (uv venv, uv pip install)"
  VENV_DIR="$VENV_DIR" exec "$ROOT/scripts/run.sh" "$@"
fi
[ -x "$VENV_DIR/bin/python" ] || uv venv --python "${PYTHON:-python3}" "$VENV_DIR"
# The stamp is scripts/setup.sh's: a venv set up here is one setup.sh need not reinstall.
stamp="$(cd "$ROOT" && cat pyproject.toml requirements.lock requirements-dev.lock rustbpe/Cargo.toml \
  rustbpe/pyproject.toml $(find rustbpe/src -type f 2>/dev/null | sort) 2>/dev/null \
  | sha256sum | cut -c1-16)-rustbpe=${ENABLE_RUSTBPE:-auto}"
want="$stamp"; [ "${MINILLM_DEV:-0}" = 1 ] && want="$stamp-dev"
installed="$(cat "$VENV_DIR/.deps_installed" 2>/dev/null || true)"
if [ "$installed" != "$want" ] && [ "$installed" != "$stamp-dev" ]; then
  lock="requirements.lock"; [ "${MINILLM_DEV:-0}" = 1 ] && lock="requirements-dev.lock"
  VIRTUAL_ENV="$VENV_DIR" uv pip install --require-hashes -r "$ROOT/$lock"
  VIRTUAL_ENV="$VENV_DIR" uv pip install --no-deps -e "$ROOT"
  if [ "${ENABLE_RUSTBPE:-auto}" != 0 ] && command -v cargo >/dev/null 2>&1; then
    VIRTUAL_ENV="$VENV_DIR" uv pip install "$ROOT/rustbpe"
  elif [ "${ENABLE_RUSTBPE:-auto}" = 1 ]; then
    echo "run_cn_pipeline.sh: ENABLE_RUSTBPE=1 but no Rust toolchain (cargo) on PATH" >&2; exit 1
  fi
  echo "$want" > "$VENV_DIR/.deps_installed"
fi
# The rest (Dagster home, identity check, the run) is run.sh's; its setup step finds the stamp
# and installs nothing.
VENV_DIR="$VENV_DIR" exec "$ROOT/scripts/run.sh" "$@"
