# The two set-up commands are `make test` and `make demo`; both install what they need.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := docker-registry skopeo podman buildah debootstrap chromium containerd redis-server
# Ceph RGW for the test bed (tests/bed/rgw.py); without recommends (no mgr, no dashboards).
APT_PACKAGES_NO_RECOMMENDS := ceph-mon ceph-osd radosgw ceph-common
PYTEST_ARGS ?=

.PHONY: all deps venv test test-all lint format demo bench image clean

all: test

# System packages the test bed drives as independent peers (registry, skopeo, podman, Ceph
# RGW, containerd's ctr pulling from `bale serve`, headless chromium for the catalog pages),
# and what the image test builds with (buildah, debootstrap for a base made locally).
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	bare=""; for p in $(APT_PACKAGES_NO_RECOMMENDS); do dpkg -s $$p >/dev/null 2>&1 || bare="$$bare $$p"; done; \
	if [ -n "$$missing$$bare" ]; then apt-get update -qq; fi; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi; \
	if [ -n "$$bare" ]; then \
		echo "installing:$$bare"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$bare; \
	fi

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# Type errors fail the run before the suite starts (CI runs `make test`).
test: deps venv
	$(VENV)/bin/mypy
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: deps venv
	$(PY) -m pytest -m '' $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

demo: deps venv
	$(PY) demo/run_demo.py

# BENCH_QUICK=1 for a small smoke run; results in bench/results (see BENCHMARKS.md).
bench: deps venv
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m bench

# The container image (Containerfile). BASE: any Debian bookworm image, e.g. one made locally;
# CONTAINER: podman or buildah, with global options (--storage-driver vfs, --root ...).
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= localhost/bale:$(VERSION)
BASE ?= docker.io/library/debian:bookworm-slim
CONTAINER ?= $(shell command -v podman || command -v buildah)
# CA_BUNDLE: a CA file pip must trust in the build (a TLS-intercepting proxy's).
IMAGE_BUILD_FLAGS ?=
CA_BUNDLE ?=
comma := ,

image:
	$(CONTAINER) build $(IMAGE_BUILD_FLAGS) $(if $(CA_BUNDLE),--secret id=ca-bundle$(comma)src=$(CA_BUNDLE)) \
		--build-arg BASE=$(BASE) -t $(IMAGE) -f Containerfile .

clean:
	rm -rf $(VENV) demo-archive bench/results
