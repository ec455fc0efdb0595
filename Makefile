# The two commands: `make synth` and `make test`. Both set up what they need inside the repository
# (.venv, node_modules and, when the system Node.js is older than 22, a Node 22 binary from npm).
#
#   make synth [APP=training] [ENV=dev]    synthesize all apps (or one) into cdk.out (DEPLOY=true: as for a deployment)
#   make test  [APP=training]              lint, then the whole test suite (or one app's and the common tests)
#   make lint                              ruff and mypy
#   make e2e                               the end-to-end loop on this machine
#   make hashes                            write the hashed lock files of the job and device requirements
#   make label-studio-local                a local Label Studio with the reference photos and pre-labels
#   make deploy APP=training [ENV=dev]     deploy one app's toolchain stack (its pipeline deploys the rest)
#   make diff   APP=training [ENV=dev]

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
APP ?=
ENV ?=
PYTEST_ARGS ?=

DEPLOY ?=
# DEPLOY=true (make deploy, the asset pipelines' synth): example values and a missing notification target are refused.
CDK_CONTEXT := $(if $(APP),-c app=$(APP)) $(if $(ENV),-c env=$(ENV)) $(if $(filter true,$(DEPLOY)),-c deploy=true)
# Node.js: the system's when it is 22 or newer, else the pinned `node` package from npm.
SYSTEM_NODE_MAJOR := $(shell node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
NPM_OMIT := $(if $(shell [ "$(SYSTEM_NODE_MAJOR)" -ge 22 ] && echo yes),--omit=optional)
export PATH := $(CURDIR)/node_modules/.bin:$(CURDIR)/$(VENV)/bin:$(PATH)
# Ultralytics must never reach the internet (weights, fonts, update checks).
export YOLO_OFFLINE := 1
export JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION := 1

TEST_PATHS := $(if $(APP),tests/shared tests/$(APP),tests)
RUNTIME_REQUIREMENTS := training/steps/requirements.txt edge_deployment/components/inference/requirements.txt
# Label Studio (the tests' real server, the local try-out) lives in its own environment: its pins are its own.
LABEL_STUDIO_VENV := .venv-label-studio
LABEL_STUDIO_REQUIREMENTS := labeling/local/label-studio-requirements.txt

.PHONY: help setup synth test lint e2e hashes deploy diff clean label-studio label-studio-local

help:
	@sed -n 's/^#   //p' Makefile

$(VENV_PYTHON):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is required (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install --quiet --disable-pip-version-check pip==25.3

# What synth needs (the CDK app); the stamp records the pins it was installed from.
$(VENV)/.synth-installed: requirements.txt constraints.txt | $(VENV_PYTHON)
	$(VENV_PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	touch $@

# What the tests need on top (ML and device packages, test tools): several GB with PyTorch.
$(VENV)/.test-installed: $(VENV)/.synth-installed requirements-dev.txt $(RUNTIME_REQUIREMENTS) constraints.txt
	$(VENV_PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	touch $@

$(LABEL_STUDIO_VENV)/.installed: $(LABEL_STUDIO_REQUIREMENTS)
	rm -rf $(LABEL_STUDIO_VENV)
	$(PYTHON) -m venv $(LABEL_STUDIO_VENV)
	$(LABEL_STUDIO_VENV)/bin/python -m pip install --quiet --disable-pip-version-check pip==25.3
	$(LABEL_STUDIO_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $(LABEL_STUDIO_REQUIREMENTS)
	touch $@

label-studio: $(LABEL_STUDIO_VENV)/.installed

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund $(NPM_OMIT)
	@node -e 'const major = +process.versions.node.split(".")[0]; if (major < 22) { console.error("Node.js 22+ is required, found " + process.version); process.exit(1) }'
	touch $@

setup: $(VENV)/.test-installed node_modules/.installed $(LABEL_STUDIO_VENV)/.installed

synth: $(VENV)/.synth-installed node_modules/.installed
	cdk synth --quiet $(CDK_CONTEXT)
	@echo "Synthesized $(if $(APP),$(APP),all apps) into cdk.out"

lint: $(VENV)/.test-installed
	$(VENV_PYTHON) -m ruff check .
	$(VENV_PYTHON) -m ruff format --check .
	$(VENV_PYTHON) -m mypy

test: $(VENV)/.test-installed node_modules/.installed $(LABEL_STUDIO_VENV)/.installed lint
	$(VENV_PYTHON) -m pytest $(TEST_PATHS) $(PYTEST_ARGS)

e2e: $(VENV)/.test-installed node_modules/.installed $(LABEL_STUDIO_VENV)/.installed
	$(VENV_PYTHON) -m pytest tests/e2e $(PYTEST_ARGS)

# The training jobs and the device install with pip --require-hashes from these lock files: every
# file of every pinned version, by SHA-256 (all platforms: the jobs run x86_64, devices amd64/aarch64).
# Run this after changing a pin in a requirements.txt beside them; a test fails until you do.
HASHED := training/steps/requirements edge_deployment/components/inference/requirements
hashes: $(VENV)/.test-installed
	@for base in $(HASHED); do \
	  $(VENV)/bin/uv pip compile --quiet --no-deps --generate-hashes --universal --python-version 3.11 \
	    --no-annotate --custom-compile-command "make hashes" $$base.txt -o $$base.lock; \
	done

label-studio-local: $(VENV)/.test-installed $(LABEL_STUDIO_VENV)/.installed
	$(VENV_PYTHON) -m labeling.local $(ARGS)

deploy: $(VENV)/.synth-installed node_modules/.installed
	@test -n "$(APP)" || { echo "Set APP=labeling|training|edge_deployment"; exit 1; }
	cdk deploy $(CDK_CONTEXT) -c deploy=true --require-approval broadening

diff: $(VENV)/.synth-installed node_modules/.installed
	cdk diff $(CDK_CONTEXT)

clean:
	rm -rf cdk.out .pytest_cache .mypy_cache .ruff_cache
