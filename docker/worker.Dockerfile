# syntax=docker/dockerfile:1
# Tessera GPU worker: Celery (solo pool, one job at a time) with PyTorch on CUDA.
# CUDA user space comes from the locked PyTorch wheels (torch==2.14.1 with the nvidia-* CUDA 13 packages pinned in
# constraints.txt), so the image's CUDA is exactly the lock's; the host needs an NVIDIA driver that supports CUDA 13
# and the NVIDIA Container Toolkit (docker) or device plugin (Kubernetes), which mount the driver libraries.
# Model weights are NOT in the image: mount them at /models (TESSERA_MODELS__ROOT); nothing is downloaded at run time.
# Build from the repository root:  docker build -f docker/worker.Dockerfile -t tessera-worker .
# CPU-only build (smaller, for machines without a GPU):
#   docker build -f docker/worker.Dockerfile --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu .
# (==2.14.1 in the lock matches 2.14.1+cpu.)

FROM python:3.11.14-slim-bookworm AS build
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL} \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['worker']))" > /tmp/requirements.txt \
 && pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt
COPY README.md ./
COPY core ./core
COPY services ./services
RUN pip install --no-cache-dir --no-deps -c constraints.txt . \
 && pip check \
 && python -c "import torch, diffusers, transformers, peft, segment_anything; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

FROM python:3.11.14-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="tessera-worker" \
      org.opencontainers.image.description="Tessera GPU worker (Celery + PyTorch CUDA)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 tessera \
 && useradd --system --no-log-init --uid 10001 --gid tessera --home-dir /home/tessera --create-home tessera \
 && mkdir -p /models /var/cache/tessera/adapters \
 && chown -R 10001:10001 /models /var/cache/tessera
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/home/tessera/.cache/huggingface \
    TESSERA_MODELS__ROOT=/models \
    TESSERA_MODELS__ADAPTER_CACHE_DIR=/var/cache/tessera/adapters
USER 10001:10001
WORKDIR /home/tessera
VOLUME ["/models"]
# Prometheus metrics, answered from a thread while a job runs (the liveness probe uses it).
EXPOSE 9100
# Exec form: Celery is PID 1 and gets SIGTERM = warm shutdown (finish the current job, then exit).
STOPSIGNAL SIGTERM
ENTRYPOINT ["tessera", "worker"]
CMD ["--queues", "train,generate"]
