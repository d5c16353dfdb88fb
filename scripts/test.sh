#!/usr/bin/env bash
# Set up (once) and run every test: the Rust crate's unit tests, then pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -k tokenizer -x
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MINILLM_DEV=1 source "$ROOT/scripts/setup.sh"
cd "$ROOT"
if command -v cargo >/dev/null 2>&1 && [ "${ENABLE_RUSTBPE:-auto}" != 0 ]; then
  echo "== cargo test (rustbpe)"
  (cd rustbpe && cargo test --quiet)
fi
echo "== pytest"
exec "$VENV_DIR/bin/python" -m pytest "$@"
