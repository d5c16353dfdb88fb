#!/usr/bin/env bash
# Run Dagster as a team does: the instance in PostgreSQL (deploy/dagster.yaml), the webserver and
# the daemon as two separate processes (docs/deploy.md).
#
#   scripts/prod.sh check    # can the instance be opened? one line naming host and database if not
#   scripts/prod.sh start    # both processes in the background; returns once they are up
#   scripts/prod.sh status   # their pids
#   scripts/prod.sh stop     # SIGTERM, then SIGKILL after 30 s
#
# DAGSTER_HOME (default .dagster-prod) gets deploy/dagster.yaml when it has no dagster.yaml.
# Connection: DAGSTER_PG_PASSWORD (required), DAGSTER_PG_HOST (localhost), DAGSTER_PG_PORT (5432),
# DAGSTER_PG_DB (dagster), DAGSTER_PG_USERNAME (dagster). DAGSTER_HOST/DAGSTER_PORT: the web UI's
# address (127.0.0.1:3000; it has no authentication of its own, see the README's Security).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROD_HOME="${DAGSTER_HOME:-$ROOT/.dagster-prod}"
# setup.sh prepares the local (SQLite) home in DAGSTER_HOME: keep it away from the Postgres one
unset DAGSTER_HOME
source "$ROOT/scripts/setup.sh"
export DAGSTER_HOME="$PROD_HOME"
cd "$ROOT"
exec "$VENV_DIR/bin/python" -m minillm_cli.prod "$@"
