#!/usr/bin/env bash
# Set up .venv if needed, then run the test-suite (pytest, slow tests included) and the linter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
.venv/bin/ruff check ivlens tests benchmarks
