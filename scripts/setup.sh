#!/usr/bin/env bash
# One-shot, idempotent set-up for a fresh Debian machine: Debian packages (cross toolchains, QEMU)
# when missing, then a .venv in the repository root with tvm_tiny installed editable.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
have gcc || need_pkgs+=(gcc)
have make || need_pkgs+=(make)
have arm-none-eabi-gcc || need_pkgs+=(gcc-arm-none-eabi libnewlib-arm-none-eabi)
[ -d /usr/lib/picolibc/arm-none-eabi ] || need_pkgs+=(picolibc-arm-none-eabi)
have riscv64-unknown-elf-gcc || need_pkgs+=(gcc-riscv64-unknown-elf)
[ -d /usr/lib/picolibc/riscv64-unknown-elf ] || need_pkgs+=(picolibc-riscv64-unknown-elf)
have qemu-system-arm || need_pkgs+=(qemu-system-arm)
have qemu-system-riscv32 || need_pkgs+=(qemu-system-misc)
python3 -c "import venv, ensurepip" 2>/dev/null || need_pkgs+=(python3-venv)

if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "[setup] installing Debian packages: ${need_pkgs[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.tvm_tiny-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing tvm_tiny (editable) and its dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev,torch,dask]"
  touch "$stamp"
fi
# The QEMU TCG plugin counting instructions between marker functions (built into the cache,
# once per QEMU plugin API; run_on_board also builds it on first use).
.venv/bin/python -m tvm_tiny.firmware | sed 's/^/[setup] wincount plugin for /'
echo "[setup] ready: $(.venv/bin/python -c 'import tvm, tvm_tiny; print("tvm", tvm.__version__)')"
