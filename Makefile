# One-command set-up and test runs.
#   make test                     default stack (onedl-* packages) in .venv: every test
#   make test STACK=openmmlab     upstream OpenMMLab stack in .venv-openmmlab: the tests whose
#                                 behaviour can differ between the mmengine/mmseg lines
#                                 (TEST_SELECTION= runs every test there too)
#   make test PYTHON=python3.13   another interpreter, in its own .venv-py3.13
#   make test TORCH='torch==2.5.1' (any torch spec; e.g. a CUDA build on a GPU machine)
PYTHON ?= python3
STACK ?= onedl
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=
DEMO_ARGS ?=
# mmcv's ops are compiled without debug information: -g doubles the compile time
# of every torch-heavy source file and DeepLabV3 calls none of these ops.
MMCV_CFLAGS ?= -g0

# The default interpreter keeps the plain names; any other gets its version appended.
PY_SUFFIX := $(if $(filter python3,$(PYTHON)),,-py$(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])'))
ifeq ($(STACK),onedl)
VENV ?= .venv$(PY_SUFFIX)
TEST_SELECTION ?=
else ifeq ($(STACK),openmmlab)
VENV ?= .venv-openmmlab$(PY_SUFFIX)
# Tests marked stack_independent exercise torch and our own code only; they run once, above.
TEST_SELECTION ?= -m "not stack_independent"
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
	CFLAGS="$(MMCV_CFLAGS)" MMCV_WITH_OPS=1 $(PIP) install --no-build-isolation 'mmcv==2.1.0'
endif
	$(PIP) install --quiet -e '.[$(STACK),dev]'
	touch $(STAMP)

test: install
	$(PY) -m pytest $(TEST_SELECTION) $(PYTEST_ARGS)

# Synthetic Cityscapes-layout data -> train on CPU -> evaluate -> colour overlays.
demo: install
	$(PY) tools/demo.py $(DEMO_ARGS)

clean:
	rm -rf .venv .venv-openmmlab .venv-py* .venv-openmmlab-py*
