#!/usr/bin/env bash
# Set up everything the app (and with --dev, the tests) need, in .venv. Safe to run again.
#   bash scripts/setup.sh          ffmpeg + the runtime requirements
#   bash scripts/setup.sh --dev    also Chromium and the test/benchmark requirements
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1

# System packages: gr.Video needs both ffmpeg and ffprobe; the browser test needs Debian's chromium.
need=()
{ command -v ffmpeg && command -v ffprobe; } >/dev/null 2>&1 || need+=(ffmpeg)
[ "$dev" = 1 ] && [ ! -x /usr/bin/chromium ] && need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if command -v apt-get >/dev/null; then
    echo "installing ${need[*]} with apt-get"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "please install: ${need[*]} (ffmpeg with ffprobe; chromium for the browser test)" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip >/dev/null 2>&1 || true
# Without an NVIDIA GPU take torch 2.13.0 first: here that is a CPU wheel on local disk, and it
# satisfies requirements.txt, whose plain `torch` would otherwise pull a multi-GB CUDA build.
if ! command -v nvidia-smi >/dev/null 2>&1 && ! python -c "import torch" >/dev/null 2>&1; then
  pip install -q "torch==2.13.0"
fi
if [ "$dev" = 1 ]; then
  pip install -q -r requirements-dev.txt
else
  pip install -q -r requirements.txt
fi
python -c "import torch, fifo; print('fifo-video ready: torch', torch.__version__, '| backbones:', ', '.join(fifo.BACKBONES))"
