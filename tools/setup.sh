#!/usr/bin/env bash
# Sets up hwcompress on a fresh Debian/Ubuntu machine: system packages (Fashion-MNIST, sshd, qemu-user; when missing and
# permitted), a virtual environment in .venv, and the pinned Python packages.
# Idempotent: a second run with an unchanged pyproject.toml takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

# --- system packages: Fashion-MNIST (IDX files) and OpenSSH's server for the remote-device tests
need_apt=()
dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || need_apt+=(dataset-fashion-mnist)
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
# qemu-user runs the emulated aarch64 test board (tools/arm_board.py)
command -v qemu-aarch64-static >/dev/null 2>&1 || need_apt+=(qemu-user-static)
python_bin=""
for cand in python3.12 python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        python_bin="$cand"; break
    fi
done
[ -n "$python_bin" ] || need_apt+=(python3 python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO="none"; fi
    fi
    if [ "$SUDO" = "none" ]; then
        log "missing Debian packages: ${need_apt[*]} (not root and no password-less sudo; install them, or pass --data PATH)"
    else
        log "installing Debian packages: ${need_apt[*]}"
        $SUDO apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
    fi
fi
if [ -z "$python_bin" ]; then python_bin=python3; fi

# --- virtual environment with the pinned packages (torch==2.13.0 in the same install)
if [ ! -x .venv/bin/python ]; then
    log "creating .venv with $("$python_bin" --version)"
    "$python_bin" -m venv .venv
fi
stamp="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f .venv/.setup-stamp ] || [ "$(cat .venv/.setup-stamp)" != "$stamp" ] || ! .venv/bin/python -c 'import hwcompress' 2>/dev/null; then
    log "installing Python packages (first time: a few minutes)"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev,tflite]' 2>&1 | grep -v -E "^WARNING: Location|is ignored: it is neither" >&2 || true
    .venv/bin/python -c 'import hwcompress, torch, onnxruntime' || { log "Python package install failed"; exit 1; }
    echo "$stamp" > .venv/.setup-stamp
fi
log "ready: $(.venv/bin/python -c 'import torch, onnxruntime; print("torch", torch.__version__, "| onnxruntime", onnxruntime.__version__)')"
