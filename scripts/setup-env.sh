#!/usr/bin/env bash
# Create .venv (if missing) and install facesim with its test and dlib extras into it (if pyproject.toml
# or scripts/constraints.txt changed since the last install). Sourced by scripts/repro.sh and scripts/test.sh; idempotent.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "facesim: creating the virtual environment .venv with $($python --version)"
    "$python" -m venv .venv
fi

stamp=.venv/.facesim-installed
wanted=$(cat pyproject.toml scripts/constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "facesim: installing facesim and its dependencies into .venv (torch alone is large; first time takes minutes)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    # the versions the committed results were computed with (see the file's header)
    .venv/bin/python -m pip install --quiet -c scripts/constraints.txt -e '.[test,dlib]'
    echo "$wanted" > "$stamp"
else
    echo "facesim: .venv is up to date with pyproject.toml"
fi

# `dvc plots show` and `dvc plots diff` pages that draw offline: DVC's HTML template with Vega, Vega-Lite and
# vega-embed inlined from the npm packages pinned in .dvc/offline-plots/pins.json (see .dvc/offline-plots/README.md). Built
# once per pin change; without npm the plots load Vega from the CDN, as DVC's own page does.
.venv/bin/python -m facesim.app.offline_plots || echo "facesim: continuing; dvc plots pages need the network" >&2
