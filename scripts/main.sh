#!/usr/bin/env bash
# The main job (examples/organism.yaml): set up .venv, build the model organisms if missing, run every
# analysis on them, and print where the results are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh run  # ivlens alone; scripts/test.sh adds the dev extra
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
exec .venv/bin/ivlens run examples/organism.yaml "$@"
