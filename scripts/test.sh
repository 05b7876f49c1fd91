#!/usr/bin/env bash
# Set up .venv if needed, then run the test-suite (pytest, slow tests included, in parallel), the linter and the
# layers check.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh dev  # ivlens, the dev extra and SmolLM2
# The report's browser test needs a real headless Chromium: install Debian's where it is missing and we are root
# (CI runs as root on a fresh Debian-like machine); elsewhere that test is skipped with the command to run.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[ivlens] installing chromium for the report's browser test" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ||
    echo "[ivlens] could not install chromium: the browser test will be skipped" >&2
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# In parallel (pytest-xdist): one worker per core (each with its share of torch's threads), whole files per worker,
# the costliest files first (tests/conftest.py) so that the workers end together. Override with -n N or
# IVLENS_TEST_WORKERS=N; -n 0 runs serially in one process.
.venv/bin/python -m pytest -q -p no:cacheprovider -n "${IVLENS_TEST_WORKERS:-auto}" --dist loadfile \
  --no-loadscope-reorder "$@"
.venv/bin/ruff check ivlens tests benchmarks
.venv/bin/lint-imports  # the layers of [tool.importlinter] in pyproject.toml
