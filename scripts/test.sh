#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite. Extra arguments go to pytest
# (e.g. -m "not integration" to skip the end-to-end `dvc repro` test).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-env.sh
# As `source .venv/bin/activate` would: the stages run `python`, MLflow serving runs `uvicorn`.
export PATH="$PWD/.venv/bin:$PATH"
echo "facesim: running the test suite"
exec .venv/bin/python -m pytest "$@"
