#!/usr/bin/env bash
# Set up .venv if needed, then run the whole pipeline: fetch, sample, train, evaluate, render.
# Extra arguments go to `dvc repro` (e.g. a stage name, or -f to force).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-env.sh
# As `source .venv/bin/activate` would: the stages run `python`, MLflow serving runs `uvicorn`.
export PATH="$PWD/.venv/bin:$PATH"
echo "facesim: running dvc repro $*"
exec .venv/bin/dvc repro "$@"
