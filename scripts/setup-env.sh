#!/usr/bin/env bash
# Create .venv (if missing) and install facesim with its test extra into it (if pyproject.toml
# changed since the last install). Sourced by scripts/repro.sh and scripts/test.sh; idempotent.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "facesim: creating the virtual environment .venv with $($python --version)"
    "$python" -m venv .venv
fi

stamp=.venv/.facesim-installed
wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "facesim: installing facesim and its dependencies into .venv (torch alone is large; first time takes minutes)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[test]'
    echo "$wanted" > "$stamp"
else
    echo "facesim: .venv is up to date with pyproject.toml"
fi
