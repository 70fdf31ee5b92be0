# zipscribe: two commands matter.
#   make install   create .venv, install torch first, then the project under a constraints file
#                  (with its test and train extras; EXTRAS= for the runtime dependencies only)
#   make test      install + the whole test suite
#   make demo      install + transcribe a small synthetic demo set with the shipped model
#
# CUDA machines override the torch build, e.g.
#   make install TORCH_SPEC="torch==2.5.1" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu124"

SHELL        := /bin/bash
PYTHON       ?= python3
VENV         ?= .venv
TORCH_SPEC   ?= torch==2.13.0
TORCH_INDEX  ?=
APT_PACKAGES ?= espeak-ng sox ffmpeg libsndfile1 iproute2 util-linux wamerican wordnet-base fortunes
APT_TEST_PACKAGES ?= chromium gettext-base openjdk-17-jre-headless prometheus
PYTEST_ARGS  ?=
# pyproject.toml's optional dependencies to install (comma-separated); infra/docker builds with EXTRAS=
EXTRAS       ?= test,train

BIN          := $(VENV)/bin
PIP          := $(BIN)/python -m pip
CONSTRAINTS  := $(VENV)/constraints.txt
comma        := ,
EXTRAS_NAME  := $(if $(EXTRAS),-$(subst $(comma),-,$(EXTRAS)))
REQUIREMENTS := $(VENV)/requirements$(EXTRAS_NAME).txt
DEPS_STAMP   := $(VENV)/.deps$(EXTRAS_NAME)
STAMP        := $(VENV)/.installed$(EXTRAS_NAME)

.PHONY: install deps system-deps test-deps test demo bench clean

install: system-deps $(STAMP)

# The dependencies alone (torch, then what pyproject.toml lists for the project and its EXTRAS),
# without the project's code: infra/docker/Dockerfile installs them in a layer that a code change
# does not rebuild. `make install` runs it first.
deps: $(DEPS_STAMP)

# Debian tools the tests and the demo use; installed only when one is missing.
system-deps:
	@missing=""; \
	for tool in espeak-ng sox ffmpeg ip unshare; do command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	[ -f /usr/share/dict/american-english ] || missing="$$missing wamerican"; \
	[ -f /usr/share/wordnet/data.noun ] || missing="$$missing wordnet-base"; \
	[ -d /usr/share/games/fortunes ] || missing="$$missing fortunes"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages (missing:$$missing)"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi

$(DEPS_STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(BIN)/python -c 'import torch; print("torch==" + torch.__version__)' > $(CONSTRAINTS)
	$(BIN)/python -c 'import sys, importlib; toml = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "pip._vendor.tomli"); \
	  p = toml.load(open("pyproject.toml", "rb"))["project"]; \
	  print("\n".join(p["dependencies"] + [d for e in sys.argv[1].split(",") if e for d in p["optional-dependencies"][e]]))' \
	  "$(EXTRAS)" > $(REQUIREMENTS)
	$(PIP) install -q -c $(CONSTRAINTS) -r $(REQUIREMENTS)
	touch $@

# The project itself, editable, on top of its dependencies (nothing left to download).
$(STAMP): $(DEPS_STAMP)
	$(PIP) install -q -c $(CONSTRAINTS) -e ".$(if $(EXTRAS),[$(EXTRAS)])"
	touch $@

# Debian packages only the test suite needs: chromium renders the HTML WER report headless
# (tests/test_wer_report.py, tests/test_evaluate.py), envsubst (gettext-base) fills the k8s
# manifests' placeholders (tests/test_infra.py), Java 17 runs Spark (tests/test_engines.py, pyspark
# local), Prometheus scrapes a test Ray head's live metrics (tests/test_metrics.py starts it on
# 127.0.0.1 and stops it; the package's own service is not used). Kept out of system-deps, so
# runtime images (infra/docker runs `make system-deps`) carry no browser. Tests that need a missing tool are
# skipped, saying which, except under CI=true, where they fail.
test-deps:
	@missing=""; \
	for tool in chromium envsubst java prometheus; do command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for the tests (missing:$$missing)"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_TEST_PACKAGES) >/dev/null; } \
	    || echo "warning: could not install $(APT_TEST_PACKAGES): the tests that need them are skipped (they fail under CI=true)"; \
	fi

# The suite runs in its own network namespace (loopback only) when the machine allows it.
test: install test-deps
	tests/isolated.sh $(BIN)/python -m pytest $(PYTEST_ARGS)

# Speaks 60 held-out test sentences (espeak-ng), transcribes them with the shipped model through
# jobs/transcribe.py on a local Ray, prints transcripts, WER, speed and a DuckDB query.
demo: install
	$(BIN)/python jobs/demo.py

bench: install
	$(BIN)/python bench/model_speed.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info demo-data demo-output
