#!/usr/bin/env bash
# Set up everything the app (and with --dev, the tests) need, in .venv. Safe to run again: each part
# is skipped when it is already done.
#   bash scripts/setup.sh          ffmpeg + the runtime requirements
#   bash scripts/setup.sh --dev    also Chromium and the test/benchmark requirements
# Environment: FIFO_APT_WAIT_S (default 300) bounds the wait for another apt/dpkg process;
# FIFO_TORCH_VERSION (default 2.13.0) is the torch installed on a machine without an NVIDIA GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
case "${1:-}" in
  "") ;;
  --dev) dev=1 ;;
  *) echo "setup.sh: unknown option ${1}: allowed is --dev" >&2; exit 2 ;;
esac
apt_wait_s="${FIFO_APT_WAIT_S:-300}"
torch_version="${FIFO_TORCH_VERSION:-2.13.0}"

# Run an apt-get command, waiting (at most apt_wait_s) while another process holds apt's or dpkg's
# lock: a fresh machine often runs unattended upgrades right after boot.
apt_get() {
  local deadline=$((SECONDS + apt_wait_s)) log rc
  log="$(mktemp)"
  while :; do
    rc=0
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=10 "$@" >"$log" 2>&1 || rc=$?
    if [ "$rc" = 0 ]; then rm -f "$log"; return 0; fi
    if grep -qiE "could not get lock|unable to acquire|lock.*held by" "$log"; then
      if [ "$SECONDS" -ge "$deadline" ]; then
        echo "setup.sh: apt is still locked after ${apt_wait_s} s by another process:" >&2
        grep -iE "lock" "$log" | head -3 >&2
        echo "setup.sh: wait for it to finish (or raise FIFO_APT_WAIT_S) and run this again" >&2
        rm -f "$log"; return 1
      fi
      echo "waiting for apt: $(grep -iE 'held by|could not get lock' "$log" | head -1)"
      sleep 5
      continue
    fi
    cat "$log" >&2; rm -f "$log"; return "$rc"
  done
}

# System packages: gr.Video needs both ffmpeg and ffprobe; the browser test needs Debian's chromium.
need=()
{ command -v ffmpeg && command -v ffprobe; } >/dev/null 2>&1 || need+=(ffmpeg)
[ "$dev" = 1 ] && [ ! -x /usr/bin/chromium ] && need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if command -v apt-get >/dev/null; then
    echo "installing ${need[*]} with apt-get"
    apt_get update -qq
    apt_get install -y -qq "${need[@]}"
  else
    echo "setup.sh: please install ${need[*]} (ffmpeg with ffprobe; chromium for the browser test)" >&2
  fi
fi

# Python packages, skipped while the requirements are those of the last successful install.
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
req_files=(requirements.txt)
if [ "$dev" = 1 ]; then req_files+=(requirements-dev.txt); fi
stamp_of() { cat "$@" scripts/setup.sh | sha256sum | cut -d' ' -f1; }
runtime_stamp="$(stamp_of requirements.txt)"
want="$(stamp_of "${req_files[@]}")"
stamp_file=.venv/.fifo-setup-$([ "$dev" = 1 ] && echo dev || echo runtime)
if [ "$(cat "$stamp_file" 2>/dev/null)" = "$want" ] \
   || { [ "$dev" = 0 ] && [ "$(cat .venv/.fifo-setup-dev-runtime 2>/dev/null)" = "$runtime_stamp" ]; }; then
  echo "requirements unchanged since the last install: pip skipped"
else
  pip install -q --upgrade pip >/dev/null 2>&1 || true
  # requirements.txt's plain `torch` is right for a Space, where it is the CUDA build. Without an
  # NVIDIA GPU take PyTorch's CPU build first, from its CPU index as PyTorch documents for pip; where
  # that index cannot be reached, the pinned version from the default index.
  if ! python -c "import torch" >/dev/null 2>&1 && ! nvidia-smi -L >/dev/null 2>&1; then
    echo "no NVIDIA GPU: installing torch ${torch_version} (CPU build)"
    pip install -q --retries 0 --timeout 10 --index-url https://download.pytorch.org/whl/cpu "torch==${torch_version}" \
      || { echo "PyTorch's CPU index unreachable: torch==${torch_version} from the default index"; \
           pip install -q "torch==${torch_version}"; }
  fi
  pip install -q -r "${req_files[-1]}"
  python -c "import torch, fifo; print('fifo-video ready: torch', torch.__version__, '| backbones:', ', '.join(fifo.BACKBONES))"
  echo "$want" >"$stamp_file"
  # A --dev install covers the runtime requirements too.
  if [ "$dev" = 1 ]; then echo "$runtime_stamp" >.venv/.fifo-setup-dev-runtime; fi
fi
