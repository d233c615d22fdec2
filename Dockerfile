# syntax=docker/dockerfile:1
#
# Two images from one file, both running the same fitjobs package:
#   docker build -t fitjobs:0.1.0 .                      the GPU image (default target `gpu`):
#       `fitjobs serve` by default; the cluster's workers run `fitjobs worker` from it
#   docker build --target api -t fitjobs-api:0.1.0 .     the API image: `fitjobs api`, no CUDA
#       libraries (TensorFlow's CPU wheel only), so API pods on CPU nodes pull far less
#
# Base: Python 3.11 (pyproject.toml requires-python) on Debian 12, pinned by exact tag.
# Dependencies come from lock files with hashes (docker/requirements/*.txt, made by
# docker/lock.sh from pyproject.toml), installed with `pip install --require-hashes`. The GPU
# image gets TensorFlow's `and-cuda` extra: NVIDIA's CUDA 12.5 and cuDNN 9.3 pip wheels
# (nvidia-cuda-runtime-cu12 12.5.82, nvidia-cudnn-cu12 9.3.0.75), the versions TensorFlow 2.21
# was built against, held there by docker/cuda-constraints.txt; a GPU node needs only the
# NVIDIA driver (CUDA 12.5 needs driver 555 or later) and the container toolkit.
# tensorflow/tensorflow:2.21.0-gpu was not used: it brings its own TensorFlow in the system
# Python, outside the ranges pyproject.toml pins; here one virtual environment holds every
# Python package at the locked versions.
FROM python:3.11.15-slim-bookworm AS runtime

# FITJOBS_HOME is the data folder (a volume in Kubernetes). The caches and XDG_RUNTIME_DIR
# (gunicorn's control socket) point at writable folders, so the root filesystem can be
# mounted read-only. NVIDIA_DRIVER_CAPABILITIES asks the container toolkit for the CUDA
# libraries and nvidia-smi (FITJOBS_GPUS=auto); which GPUs are visible is left to the runtime.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FITJOBS_VENV=/opt/fitjobs/venv \
    PATH=/opt/fitjobs/venv/bin:$PATH \
    HOME=/home/fitjobs \
    FITJOBS_HOME=/var/lib/fitjobs \
    FITJOBS_HOST=0.0.0.0 \
    FITJOBS_PORT=8080 \
    XDG_CACHE_HOME=/var/cache/fitjobs \
    HF_HOME=/var/cache/fitjobs/huggingface \
    KERAS_HOME=/var/cache/fitjobs/keras \
    CUDA_CACHE_PATH=/var/cache/fitjobs/nv \
    XDG_RUNTIME_DIR=/tmp \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# A fixed numeric uid, so Kubernetes can check runAsNonRoot against the image.
RUN groupadd --system --gid 10001 fitjobs \
 && useradd --system --uid 10001 --gid fitjobs --home-dir /home/fitjobs --create-home \
            --shell /usr/sbin/nologin fitjobs \
 && mkdir -p /var/lib/fitjobs /var/cache/fitjobs \
 && chown fitjobs:fitjobs /var/lib/fitjobs /var/cache/fitjobs

WORKDIR /opt/fitjobs/src
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FITJOBS_PORT', '8080'), timeout=4)"]


FROM runtime AS api

# Dependencies first, from the lock alone: this layer is rebuilt only when the lock or the
# script changes, not for a code change or a new version number in pyproject.toml.
COPY docker/install.sh docker/
COPY docker/requirements/cpu.txt docker/requirements/
RUN PIP_NO_CACHE_DIR=1 docker/install.sh deps

# The package itself; a code change rebuilds only this layer.
COPY pyproject.toml README.md ./
COPY service/ service/
RUN PIP_NO_CACHE_DIR=1 docker/install.sh project

WORKDIR /var/lib/fitjobs
USER 10001:10001
CMD ["fitjobs", "api"]


FROM runtime AS gpu

COPY docker/install.sh docker/
COPY docker/requirements/cuda.txt docker/requirements/
RUN PIP_NO_CACHE_DIR=1 FITJOBS_CUDA=1 docker/install.sh deps

COPY pyproject.toml README.md ./
COPY service/ service/
RUN PIP_NO_CACHE_DIR=1 docker/install.sh project

WORKDIR /var/lib/fitjobs
USER 10001:10001
CMD ["fitjobs", "serve"]
