# syntax=docker/dockerfile:1
#
# The fitjobs GPU image. `fitjobs serve` (API + supervisor, SQLite under FITJOBS_HOME) runs by
# default; the cluster layout runs `fitjobs api` and `fitjobs worker` from the same image
# (k8s/overlays/cluster). Build: docker build -t fitjobs:0.1.0 .
#
# Base: Python 3.11 (pyproject.toml requires-python) on Debian 12, pinned by exact tag.
# TensorFlow comes with its `and-cuda` extra: CUDA and cuDNN as NVIDIA's pip wheels at the
# versions TensorFlow 2.21 was built against (TensorFlow's documented Linux GPU install), so a
# GPU node needs only the NVIDIA driver and container toolkit. tensorflow/tensorflow:2.21.0-gpu
# was not used: it brings its own TensorFlow in the system Python, outside the ranges
# pyproject.toml pins, and system CUDA libraries reported not to match what TensorFlow 2.21
# loads; here one virtual environment holds every Python package at the pinned versions.
FROM python:3.11.15-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FITJOBS_VENV=/opt/fitjobs/venv

# A fixed numeric uid, so Kubernetes can check runAsNonRoot against the image.
RUN groupadd --system --gid 10001 fitjobs \
 && useradd --system --uid 10001 --gid fitjobs --home-dir /home/fitjobs --create-home \
            --shell /usr/sbin/nologin fitjobs \
 && mkdir -p /var/lib/fitjobs /var/cache/fitjobs \
 && chown fitjobs:fitjobs /var/lib/fitjobs /var/cache/fitjobs

WORKDIR /opt/fitjobs/src

# Dependencies first: this layer is rebuilt only when pyproject.toml or the script changes.
COPY pyproject.toml ./
COPY docker/install.sh docker/
RUN PIP_NO_CACHE_DIR=1 FITJOBS_CUDA=1 docker/install.sh deps

# The package itself; a code change rebuilds only this layer.
COPY README.md ./
COPY service/ service/
RUN PIP_NO_CACHE_DIR=1 docker/install.sh project

# FITJOBS_HOME is the data folder (a volume in Kubernetes). The caches and XDG_RUNTIME_DIR
# (gunicorn's control socket) point at writable folders, so the root filesystem can be
# mounted read-only. NVIDIA_DRIVER_CAPABILITIES asks the container toolkit for the CUDA
# libraries and nvidia-smi (FITJOBS_GPUS=auto); which GPUs are visible is left to the runtime.
ENV PATH=/opt/fitjobs/venv/bin:$PATH \
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

WORKDIR /var/lib/fitjobs
USER 10001:10001
EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FITJOBS_PORT', '8080'), timeout=4)"]

CMD ["fitjobs", "serve"]
