# syntax=docker/dockerfile:1
# Tessera API (FastAPI + the Celery client): CPU only, and no torch. The same image runs the webhooks worker
# (`tessera worker --queues webhooks`), which imports no ML code either.
# Build from the repository root:  docker build -f docker/api.Dockerfile -t tessera-api .

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Dependencies first (from pyproject, through the lock), so code edits do not reinstall them.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['api']))" > /tmp/requirements.txt \
 && pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt
COPY README.md ./
COPY core ./core
COPY services ./services
RUN pip install --no-cache-dir --no-deps -c constraints.txt . \
 && pip check
# The API image must not contain the ML stack: fail the build if anything pulled it in.
RUN python -c "import importlib.util as u, sys; bad = [m for m in ('torch', 'torchvision', 'diffusers', 'transformers', 'peft') if u.find_spec(m)]; sys.exit(f'torch-free API image contains {bad}' if bad else 0)"

FROM python:3.11.14-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="tessera-api" \
      org.opencontainers.image.description="Tessera HTTP API and webhooks worker (no torch)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 tessera \
 && useradd --system --no-log-init --uid 10001 --gid tessera --home-dir /home/tessera --create-home tessera
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1
# Checked again in the image that ships.
RUN python -c "import importlib.util as u, sys; sys.exit('torch in the API image' if u.find_spec('torch') else 0)" \
 && tessera --help > /dev/null
USER 10001:10001
WORKDIR /home/tessera
EXPOSE 8000 9100
# Exec form: the Python process is PID 1 and receives SIGTERM itself (uvicorn / Celery graceful shutdown).
STOPSIGNAL SIGTERM
ENTRYPOINT ["tessera"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
