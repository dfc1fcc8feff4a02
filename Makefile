# Two commands for a newcomer: `make demo` and `make test`.
# Each creates .venv when missing and installs featx with everything it needs
# (a stamp file makes the second run instant).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.featx-installed
# torch is pinned and installed first: an unpinned torch (asked for by
# efficientnet-lite-pytorch) would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
EXTRAS ?= cpu,torch-import,tune,dask,dev

.PHONY: demo test venv clean bench

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/featx demo

# One pytest worker per core (pytest-xdist); worksteal keeps every worker busy to the end.
# Then the tests marked `keras` (every command that runs a Keras model) again with Keras on PyTorch.
test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist worksteal
	KERAS_BACKEND=torch $(PY) -m pytest -q -n auto --dist worksteal -m keras

clean:
	rm -rf $(VENV) build *.egg-info
