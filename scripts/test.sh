#!/usr/bin/env bash
# The whole test suite: lint, types, tests (slow end-to-end ones included),
# the wheel built and imported outside the source tree, and the docs built strictly.
# Run through `make test`, which creates .venv first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true WANDB_ERROR_REPORTING=false

step() { printf '\n== %s\n' "$*"; }

step "system packages the end-to-end tests need"
scripts/install-system-deps.sh

step "lint and format (ruff), types (mypy --strict on tracelet/ and the exporters)"
$PY -m ruff check .
$PY -m ruff format --check .
$PY -m mypy

step "tests"
$PY -m pytest "$@"

step "wheel: build, install into a clean venv, import from it"
rm -rf dist
$PY -m build --wheel --outdir dist . >/dev/null
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
python3 -m venv "$scratch/venv"
"$scratch/venv/bin/pip" install --quiet dist/*.whl
(cd "$scratch" && "$scratch/venv/bin/python" - <<'PY'
import sys
import tracelet
import tracelet.exporters.mlflow  # the exporters ship inside the wheel
import tracelet.exporters.wandb, tracelet.exporters.clearml  # noqa: E401
from tracelet import _registry
assert tracelet.__file__.startswith(sys.prefix), tracelet.__file__
names = _registry.available()
assert "mlflow" in names, names
assert {"wandb", "clearml"} <= set(names), names
print("wheel OK:", tracelet.__version__, tracelet.__file__, "backends:", ", ".join(names))
PY
)
"$scratch/venv/bin/tracelet" --version  # the console script (tracelet sync) is installed

step "docs (mkdocs --strict)"
.venv/bin/mkdocs build --strict --quiet --site-dir build/site
echo "docs OK"
