#!/usr/bin/env bash
# Start the Dagster web UI for this project, reachable from this machine only (127.0.0.1), with
# the project-local Dagster home so run history persists. DAGSTER_HOST/DAGSTER_PORT override;
# see the README before exposing it beyond localhost (it has no authentication of its own).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$VENV_DIR/bin/dagster" dev -w workspace.yaml -h "${DAGSTER_HOST:-127.0.0.1}" -p "${DAGSTER_PORT:-3000}"
