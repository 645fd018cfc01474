# `make install` builds .venv from nothing; `make demo` and `make test` use it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch where no CUDA is present; a CUDA machine takes the default build.
TORCH ?= torch==2.13.0

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH)"
	$(PIP) install --quiet -e ".[pinned,test]"
	touch $@

demo: install
	$(VENV)/bin/codeclens demo

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/store_size.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
