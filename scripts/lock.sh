#!/usr/bin/env bash
# Regenerate the hashed lock files from pyproject.toml after changing a dependency. uv resolves
# (for every platform, Python 3.11); setup.sh installs them with plain pip --require-hashes.
#   requirements.lock      what the pipeline needs at run time
#   requirements-dev.lock  that plus the `dev` extra (tests, linters, peers of the tests)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
UV="${UV:-$(command -v uv || echo .venv/bin/uv)}"
[ -x "$UV" ] || { echo "lock: needs uv (pip install uv, or set UV=/path/to/uv)" >&2; exit 2; }
compile=("$UV" pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes -q)
"${compile[@]}" -o requirements.lock
"${compile[@]}" --extra dev -o requirements-dev.lock
# dagster-graphql asks for gql[requests]: pip's hash mode wants the extra pinned on the line itself.
sed -i 's/^gql==/gql[requests]==/' requirements.lock requirements-dev.lock
