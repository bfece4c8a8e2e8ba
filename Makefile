# kube-prefetch. `make demo` runs it with no cluster; `make test` runs every test.
CARGO ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
CRD := manifests/base/crd/prefetches.cache.techsquad.rocks.yaml
CHART_CRD := manifests/chart/crds/prefetches.cache.techsquad.rocks.yaml
OBSERVABILITY := manifests/observability
# The values that render tests/golden/chart-observability.yaml (tests/src/manifests.rs).
OBSERVABILITY_SETS := --set tls.source=cert-manager --set grafanaDashboard.enabled=true --set prometheusRule.enabled=true --set prometheusRule.labels.release=kube-prometheus-stack

.PHONY: demo test build images crd chart-golden observability certs lint fmt bench clean docker-build deploy undeploy

## demo: start the webhook on 127.0.0.1 with throwaway certificates and show its decisions
demo:
	$(CARGO) build -q -p prefetch-webhook -p prefetch-controller -p prefetch-tests --bins
	$(TARGET_DIR)/debug/prefetch-demo

## test: unit, property and end-to-end tests (the e2e tests run the built binaries), and the
## images' tests on what `make images` built (skipped, saying so, where umoci and skopeo are
## missing: `apt-get install umoci skopeo runc`; CI installs them and fails without images)
test:
	$(CARGO) build --workspace --bins
	@if command -v umoci >/dev/null && command -v skopeo >/dev/null; then \
		$(MAKE) --no-print-directory images; \
	else \
		echo "make test: umoci or skopeo missing, images not built; tests/images.rs will skip"; \
	fi
	$(CARGO) test --workspace

## build: release binaries
build:
	$(CARGO) build --workspace --bins --release --locked

## images: the controller, webhook and noop images as OCI layouts and archives in
## target/images/, built without Docker (umoci, skopeo; see images/build.sh)
images:
	$(CARGO) build --profile image --locked -p prefetch-controller -p prefetch-webhook
	$(CARGO) build --release --locked --manifest-path noop/Cargo.toml --target-dir $(TARGET_DIR)/noop
	images/build.sh

## crd: regenerate the CRD from common/src/api.rs
crd:
	$(CARGO) run -q -p prefetch-common --bin prefetch-crdgen > $(CRD)
	cp $(CRD) $(CHART_CRD)

## chart-golden: re-render tests/golden/ after a chart change (needs helm)
chart-golden:
	helm template kube-prefetch manifests/chart --namespace prefetch-system --set tls.source=cert-manager > tests/golden/chart-cert-manager.yaml
	helm template kube-prefetch manifests/chart --namespace prefetch-system $(OBSERVABILITY_SETS) --show-only templates/grafana-dashboard.yaml --show-only templates/prometheus-rule.yaml > tests/golden/chart-observability.yaml

## observability: copy the dashboard and the alerts of manifests/observability/ into the chart
## (files/) and the kustomize component (components/prometheus-rule/); tests/observability.rs
## fails while a copy differs
observability:
	cp $(OBSERVABILITY)/grafana-dashboard.json $(OBSERVABILITY)/prometheus-rules.yaml manifests/chart/files/
	{ printf '%s\n' \
		'# Written by `make observability` from manifests/observability/prometheus-rules.yaml.' \
		'apiVersion: monitoring.coreos.com/v1' 'kind: PrometheusRule' 'metadata:' \
		'  name: kube-prefetch' '  namespace: prefetch-system' '  labels:' \
		'    app.kubernetes.io/part-of: kube-prefetch' 'spec:'; \
	  sed -e '/^#/d' -e 's/^/  /' $(OBSERVABILITY)/prometheus-rules.yaml; \
	} > manifests/components/prometheus-rule/prometheus-rule.yaml

## certs: CA and serving certificate into certs/, kustomize inputs into manifests/certs/
certs:
	$(CARGO) run -q -p prefetch-certs -- --out certs --kustomize-dir manifests/certs

## lint: formatting and clippy, as required before every submission
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## bench: webhook latency under open-loop load, against a bare axum+rustls server (release)
bench:
	$(CARGO) build --release -p prefetch-webhook -p prefetch-bench
	$(TARGET_DIR)/release/webhook-load $(BENCH_ARGS)

clean:
	$(CARGO) clean

## docker-build: the same three images with a Docker engine (same files and config as `make
## images`, and the same names; other platforms: `docker buildx build --platform linux/arm64 ...`)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
VERSION := $(shell sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
IMAGE_REGISTRY ?= ghcr.io/kainlite
docker-build:
	docker build --build-arg REVISION=$(REVISION) -f Dockerfile.controller -t $(IMAGE_REGISTRY)/kube-prefetch-controller:$(VERSION) .
	docker build --build-arg REVISION=$(REVISION) -f Dockerfile.webhook -t $(IMAGE_REGISTRY)/kube-prefetch-webhook:$(VERSION) .
	docker build --build-arg REVISION=$(REVISION) -f Dockerfile.noop -t $(IMAGE_REGISTRY)/kube-prefetch-noop:$(VERSION) .

## deploy: certificates if absent, then the kustomize base (needs kubectl and a cluster)
deploy: certs
	kubectl apply -k manifests/

undeploy:
	kubectl delete -k manifests/ --ignore-not-found

