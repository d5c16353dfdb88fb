#!/usr/bin/env bash
# Create the virtualenv, install MiniLLM into it once, build the rustbpe extension, and prepare a
# project-local Dagster home. Safe to run again: it reinstalls only when the lock files, the Rust
# sources or ENABLE_RUSTBPE changed since the last install ($VENV_DIR/.deps_installed).
# Dependencies come from the hashed lock files (scripts/lock.sh regenerates them): the runtime
# set by default, the dev set (tests, linters) when MINILLM_DEV=1 (scripts/test.sh sets it).
#
#   PYTHON          interpreter for the venv (default: python3)
#   VENV_DIR        virtualenv folder (default: .venv in the project)
#   ENABLE_RUSTBPE  unset: build rustbpe when cargo exists, else use the pure-Python trainer
#                   1: rustbpe is required (fail without a Rust toolchain)   0: skip it
#   MINILLM_DEV     1: also install the dev dependencies (tests, linters)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV_DIR="${VENV_DIR:-.venv}"
case "$VENV_DIR" in /*) ;; *) VENV_DIR="$ROOT/$VENV_DIR" ;; esac
RUSTBPE="${ENABLE_RUSTBPE:-auto}"
case "$RUSTBPE" in auto|0|1) ;; *) echo "setup: ENABLE_RUSTBPE must be 0, 1 or unset (got '$RUSTBPE')" >&2; exit 2 ;; esac

if [ ! -x "$VENV_DIR/bin/python" ]; then
  echo "setup: creating virtualenv $VENV_DIR with $PYTHON"
  "$PYTHON" -m venv "$VENV_DIR"
fi
PIP=("$VENV_DIR/bin/python" -m pip --disable-pip-version-check)

LOCK="requirements.lock"
[ "${MINILLM_DEV:-0}" = 1 ] && LOCK="requirements-dev.lock"
stamp="$(cd "$ROOT" && cat pyproject.toml requirements.lock requirements-dev.lock rustbpe/Cargo.toml \
  rustbpe/pyproject.toml $(find rustbpe/src -type f 2>/dev/null | sort) 2>/dev/null \
  | sha256sum | cut -c1-16)-rustbpe=$RUSTBPE"
want="$stamp"; [ "$LOCK" = requirements.lock ] || want="$stamp-dev"
installed="$(cat "$VENV_DIR/.deps_installed" 2>/dev/null || true)"
# A dev install serves a runtime request too; a runtime install does not serve the tests.
if [ "$installed" != "$want" ] && [ "$installed" != "$stamp-dev" ]; then
  echo "setup: installing MiniLLM and its dependencies into $VENV_DIR (first run: a few minutes)"
  # PyPI's torch wheel brings its CUDA libraries: the venv grows to about 6.5 GB, and a full disk
  # otherwise surfaces only as pip's bare "[Errno 28] No space left on device".
  free_gb=$(( $(df -Pk "$VENV_DIR" | awk 'NR==2 {print $4}') / 1048576 ))
  if [ "$free_gb" -lt 8 ] && ! compgen -G "$VENV_DIR/lib/python*/site-packages/torch" >/dev/null; then
    echo "setup: WARNING: only ${free_gb} GB free under $VENV_DIR; a first install needs about 8 GB" >&2
  fi
  if ! "${PIP[@]}" install -q --require-hashes -r "$ROOT/$LOCK" \
     || ! "${PIP[@]}" install -q --no-deps -e "$ROOT"; then
    echo "setup: pip could not install MiniLLM into $VENV_DIR (${free_gb} GB were free before it began)" >&2
    exit 1
  fi
  if [ "$RUSTBPE" = 0 ]; then
    "${PIP[@]}" uninstall -q -y minillm-rustbpe >/dev/null 2>&1 || true
    echo "setup: ENABLE_RUSTBPE=0: rustbpe skipped; the tokenizer trains with the pure-Python trainer"
  elif command -v cargo >/dev/null 2>&1; then
    echo "setup: building the rustbpe extension (cargo, release)"
    if ! "${PIP[@]}" install -q "$ROOT/rustbpe"; then
      if [ "$RUSTBPE" = 1 ]; then echo "setup: rustbpe failed to build and ENABLE_RUSTBPE=1" >&2; exit 1; fi
      echo "setup: WARNING: rustbpe failed to build; the tokenizer trains with the pure-Python trainer" >&2
    fi
  elif [ "$RUSTBPE" = 1 ]; then
    echo "setup: ENABLE_RUSTBPE=1 but no Rust toolchain (cargo) is on PATH; install one from rustup.rs" >&2
    exit 1
  else
    echo "setup: no Rust toolchain found: rustbpe not built; the tokenizer trains with the pure-Python trainer"
  fi
  echo "$want" > "$VENV_DIR/.deps_installed"
fi

# A project-local Dagster home: run history survives restarts, telemetry is off, training runs
# queue on one pool slot (one device), and the web UI's first-visit dialog is skipped.
export DAGSTER_HOME="${DAGSTER_HOME:-$ROOT/.dagster}"
mkdir -p "$DAGSTER_HOME/.nux"
if [ ! -f "$DAGSTER_HOME/dagster.yaml" ]; then
  cat > "$DAGSTER_HOME/dagster.yaml" <<'YAML'
telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 1
YAML
fi
[ -f "$DAGSTER_HOME/.nux/nux.yaml" ] || echo "seen: 1" > "$DAGSTER_HOME/.nux/nux.yaml"
export VENV_DIR
