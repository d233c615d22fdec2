#!/usr/bin/env bash
# Install fitjobs into a virtual environment. The Dockerfile runs this script, and
# tests/deploy/test_install_script.py runs the same steps on the host.
#
#   docker/install.sh deps    [VENV]   create VENV and install the locked dependencies, hashes checked
#   docker/install.sh project [VENV]   install the fitjobs package itself (dependencies already there)
#   docker/install.sh all     [VENV]   both
#
# VENV defaults to $FITJOBS_VENV. The two steps are separate so that an image rebuilt after a
# code change reuses the dependency layer: `deps` reads only the lock file
# (docker/requirements/cpu.txt, or cuda.txt with FITJOBS_CUDA=1; docker/lock.sh makes them).
#
# Environment:
#   FITJOBS_VENV   target virtual environment when no VENV argument is given
#   FITJOBS_CUDA   1: install the GPU lock, with tensorflow[and-cuda] (CUDA and cuDNN as NVIDIA's
#                  pip wheels, the versions this TensorFlow release was built against), and
#                  register those libraries with the dynamic linker (needs root: writes
#                  /etc/ld.so.conf.d)
#   PYTHON         interpreter that creates the environment (default: python3.11, else python3)
#
# The service starts with `VENV/bin/fitjobs serve` (the Dockerfile's CMD).
set -euo pipefail

usage() {
    sed -n '2,9p' "$0" >&2
    exit 2
}

step=${1:-}
venv=${2:-${FITJOBS_VENV:-}}
[[ -n "$step" && -n "$venv" ]] || usage
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cuda=${FITJOBS_CUDA:-0}

install_deps() {
    local python=${PYTHON:-}
    if [[ -z "$python" ]]; then
        python=$(command -v python3.11 || command -v python3)
    fi
    "$python" - <<'PY'
import sys
if sys.version_info[:2] != (3, 11):
    sys.exit(f"fitjobs needs Python 3.11 (pyproject.toml requires-python), found {sys.version.split()[0]}")
PY
    [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"

    local lock="$src/docker/requirements/cpu.txt"
    if [[ "$cuda" == "1" ]]; then lock="$src/docker/requirements/cuda.txt"; fi
    [[ -f "$lock" ]] || { echo "install.sh: $lock is missing (docker/lock.sh makes it)" >&2; exit 1; }
    # Every package pinned with its hashes: pip refuses a file whose hash differs, and any
    # package the lock does not list.
    "$venv/bin/python" -m pip install --quiet --require-hashes --no-deps --requirement "$lock"

    if [[ "$cuda" == "1" ]]; then
        # TensorFlow's own library search path misses some of the NVIDIA wheels' folders
        # (cusolver, nvjitlink, curand, nvrtc), so they are registered with ld.so.
        "$venv/bin/python" - >/etc/ld.so.conf.d/fitjobs-nvidia.conf <<'PY'
import glob
import os
import sysconfig

for folder in sorted(glob.glob(os.path.join(sysconfig.get_paths()["purelib"], "nvidia", "*", "lib"))):
    print(folder)
PY
        ldconfig
    fi
}

install_project() {
    [[ -x "$venv/bin/python" ]] || { echo "install.sh: run the deps step first ($venv has no python)" >&2; exit 1; }
    "$venv/bin/python" -m pip install --quiet --no-deps "$src"
    # Fails when pyproject.toml gained a dependency that the deps layer does not have.
    "$venv/bin/python" -m pip check
    "$venv/bin/fitjobs" --help >/dev/null
}

case "$step" in
    deps) install_deps ;;
    project) install_project ;;
    all) install_deps; install_project ;;
    *) usage ;;
esac
