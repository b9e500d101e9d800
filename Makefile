# fsagent: `make run` starts the four services locally; `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")

.PHONY: help setup proto run test test-fast tools bench clean images cluster cluster-down

help:
	@echo "make run    start gateway, agent, sandbox and cache on 127.0.0.1 (sample data, offline model)"
	@echo "make test   install what the tests need and run the whole suite"
	@echo "make proto  regenerate the gRPC code from proto/"
	@echo "make bench  run the benchmarks (prints numbers)"
	@echo "make images build the four container images with podman (fsagent-<svc>:dev; root, Debian)"
	@echo "make cluster       start a local Kubernetes control plane (etcd, kube-apiserver, prometheus-operator);"
	@echo "                   kubeconfig in .tools/kubeconfig; make cluster-down stops it"

# uv manages the Python environment; install it from PyPI when it is missing.
setup:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen

proto: setup
	./scripts/gen_proto.sh

run: proto
	$(UV) run --frozen fsagent run

# Helm, kubectl, promtool, and the control plane built from its Go modules (cached in .tools/).
tools:
	./scripts/install_tools.sh
	./scripts/control-plane.sh build

cluster: tools
	./scripts/control-plane.sh up

cluster-down:
	./scripts/control-plane.sh down

test: setup tools
	$(UV) run --frozen pytest

test-fast: setup
	$(UV) run --frozen pytest -m "not integration" -x

# Local base image (debootstrap, cached in .tools/images) + the four service images; needs root.
images:
	./scripts/build_images.sh

bench: setup
	$(UV) run --frozen python -m benchmarks

clean:
	rm -rf .venv .fsagent-cache .fsagent-run .pytest_cache .hypothesis .tools
