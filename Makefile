# One-command set-up and test runs.
#   make test                     default stack (onedl-* packages) in .venv
#   make test STACK=openmmlab     upstream OpenMMLab stack in .venv-openmmlab
#   make test TORCH='torch==2.5.1' (any torch spec; e.g. a CUDA build on a GPU machine)
PYTHON ?= python3
STACK ?= onedl
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=
DEMO_ARGS ?=

ifeq ($(STACK),onedl)
VENV ?= .venv
else ifeq ($(STACK),openmmlab)
VENV ?= .venv-openmmlab
else
$(error STACK must be 'onedl' or 'openmmlab', got '$(STACK)')
endif

PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install test demo clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet '$(TORCH)'
ifeq ($(STACK),openmmlab)
	# mmcv 2.1.0 ships only a source distribution; its compiled ops are
	# required by mmseg 1.2.2 and must be built against the installed torch.
	$(PIP) install --quiet 'setuptools<70' wheel ninja
	MMCV_WITH_OPS=1 $(PIP) install --no-build-isolation 'mmcv==2.1.0'
endif
	$(PIP) install --quiet -e '.[$(STACK),dev]'
	touch $(STAMP)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# Synthetic Cityscapes-layout data -> train on CPU -> evaluate -> colour overlays.
demo: install
	$(PY) tools/demo.py $(DEMO_ARGS)

clean:
	rm -rf .venv .venv-openmmlab
