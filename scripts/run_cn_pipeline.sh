#!/usr/bin/env bash
# scripts/run.sh for users of uv: the same pipeline, with the environment managed by uv.
# Usage and environment as scripts/run.sh (--smoke-test, PRETRAIN_ARGS, SFT_ARGS, DPO_ARGS, ...).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! command -v uv >/dev/null 2>&1; then
  echo "run_cn_pipeline.sh: uv is not installed. Install it (pip install uv) or use scripts/run.sh," \
       "which needs only python3 and pip." >&2
  exit 1
fi
VENV_DIR="${VENV_DIR:-.venv}"
case "$VENV_DIR" in /*) ;; *) VENV_DIR="$ROOT/$VENV_DIR" ;; esac
[ -x "$VENV_DIR/bin/python" ] || uv venv --python "${PYTHON:-python3}" "$VENV_DIR"
stamp="$(cd "$ROOT" && cat pyproject.toml rustbpe/Cargo.toml rustbpe/pyproject.toml \
  $(find rustbpe/src -type f 2>/dev/null | sort) 2>/dev/null | sha256sum | cut -c1-16)-rustbpe=${ENABLE_RUSTBPE:-auto}"
if [ "$(cat "$VENV_DIR/.deps_installed" 2>/dev/null)" != "$stamp" ]; then
  VIRTUAL_ENV="$VENV_DIR" uv pip install -e "$ROOT[dev]"
  if [ "${ENABLE_RUSTBPE:-auto}" != 0 ] && command -v cargo >/dev/null 2>&1; then
    VIRTUAL_ENV="$VENV_DIR" uv pip install "$ROOT/rustbpe"
  elif [ "${ENABLE_RUSTBPE:-auto}" = 1 ]; then
    echo "run_cn_pipeline.sh: ENABLE_RUSTBPE=1 but no Rust toolchain (cargo) on PATH" >&2; exit 1
  fi
  echo "$stamp" > "$VENV_DIR/.deps_installed"
fi
# The rest (Dagster home, identity check, the run) is shared with run.sh; its setup step now
# finds the stamp and installs nothing.
VENV_DIR="$VENV_DIR" exec "$ROOT/scripts/run.sh" "$@"
