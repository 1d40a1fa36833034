#!/usr/bin/env bash
# Each plugin's tests with only the core and that plugin installed, one plugin at a time in
# one virtual environment (.venv-alone): a plugin's tests may not lean on another plugin.
# Tests that do need one (a pipeline over item files needs h5_recsys) skip, saying which.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-alone}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet "${RQF_TORCH_SPEC:-torch==2.13.0}"
"$VENV/bin/python" -m pip install --quiet -e . pytest pytest-xdist
status=0
for plugin in h5_recsys h5_speech rqvae rqkmeans tiger; do
  dist="rqf-${plugin//_/-}"
  "$VENV/bin/python" -m pip install --quiet -e "plugins/$plugin"
  echo "== $plugin alone: $("$VENV/bin/rqf" plugins | tr '\n' ' ' | cut -c1-100)"
  "$VENV/bin/python" -m pytest -q -n auto --dist loadfile -p no:cacheprovider \
    "plugins/$plugin/tests" || status=1
  "$VENV/bin/python" -m pip uninstall --quiet -y "$dist"
done
exit $status
