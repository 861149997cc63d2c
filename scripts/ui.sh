#!/usr/bin/env bash
# MLflow's UI on the project's runs: `facesim ui` from .venv (set up first if needed), which prints the URL of
# the facesim runs with their headline metrics and serves until Ctrl-C. Arguments go to it, e.g.
#   scripts/ui.sh --port 5001
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-env.sh >&2
exec .venv/bin/facesim ui "$@"
