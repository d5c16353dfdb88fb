#!/usr/bin/env bash
# The code gates CI runs before the tests: ruff (lint and format check), mypy (config in
# pyproject's [tool.mypy]) and the import contracts (lint-imports, [tool.importlinter]).
# Needs the dev tools: run `MINILLM_DEV=1 scripts/setup.sh` once (scripts/test.sh does too).
#   VENV_DIR  virtualenv with the dev tools (default: .venv in the project)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${VENV_DIR:-.venv}"
case "$VENV_DIR" in /*) ;; *) VENV_DIR="$ROOT/$VENV_DIR" ;; esac
cd "$ROOT"
# lint-imports and mypy import the project's packages from the checkout, not an installed copy.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
failed=()
gate() {
  local name="$1"; shift
  echo "== $name"
  "$@" || failed+=("$name")
}
gate "ruff check" "$VENV_DIR/bin/ruff" check .
gate "ruff format --check" "$VENV_DIR/bin/ruff" format --check .
gate "mypy" "$VENV_DIR/bin/mypy"
gate "lint-imports" "$VENV_DIR/bin/lint-imports"
if [ ${#failed[@]} -gt 0 ]; then
  echo "lint: failed: ${failed[*]}" >&2
  exit 1
fi
echo "lint: all gates passed"
