#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite. Extra arguments go to pytest.
# By default (pyproject's addopts) the integration tests are left out: `dvc repro` end to end, a team's
# DVC remote, a real mlflow server, the served model over HTTP. `-m integration` runs only those (a later
# -m wins over addopts), `-m "integration or not integration"` everything.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-env.sh
# As `source .venv/bin/activate` would: the stages run `python`, MLflow serving runs `uvicorn`.
export PATH="$PWD/.venv/bin:$PATH"
echo "facesim: running the test suite"
exec .venv/bin/python -m pytest "$@"
