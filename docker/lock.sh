#!/usr/bin/env bash
# Regenerate the image's lock files from pyproject.toml: every package pinned, with hashes.
#
#   docker/lock.sh
#
# Writes docker/requirements/cpu.txt (the API image, and any host without a GPU) and
# docker/requirements/cuda.txt (the GPU image: tensorflow[and-cuda], with NVIDIA's CUDA and
# cuDNN wheels held at the versions TensorFlow was built against, docker/cuda-constraints.txt).
# docker/install.sh installs one of them with `pip install --require-hashes`. Run this after
# changing the dependencies in pyproject.toml; tests/deploy/test_locks.py fails until then.
# Needs the package index (uv resolves for Linux x86_64 and Python 3.11 whatever the host).
set -euo pipefail

UV_VERSION=0.13.8
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools/venv"
"$tools/venv/bin/pip" install --quiet "uv==$UV_VERSION"

compile() {
    local output=$1
    shift
    "$tools/venv/bin/uv" pip compile --quiet --generate-hashes --no-header --annotation-style line \
        --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
        --custom-compile-command "docker/lock.sh" --output-file "$output" "$@"
}

cd "$root"
compile docker/requirements/cpu.txt pyproject.toml
printf 'tensorflow[and-cuda]\n' >"$tools/cuda.in"
compile docker/requirements/cuda.txt pyproject.toml "$tools/cuda.in" --constraint docker/cuda-constraints.txt
echo "docker/lock.sh: wrote docker/requirements/cpu.txt and docker/requirements/cuda.txt"
