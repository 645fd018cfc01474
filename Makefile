# `make install` builds .venv from nothing; `make demo` and `make test` use it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch where no CUDA is present; a CUDA machine takes the default build.
TORCH ?= torch==2.13.0

.PHONY: install demo test bench clean chromium

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH)"
	$(PIP) install --quiet -e ".[pinned,test]"
	touch $@

demo: install
	$(VENV)/bin/codeclens demo

test: install chromium
	$(PY) -m pytest -q

# Headless Chromium for the report's browser test (Debian's package). Installed when we
# can (root with apt-get); elsewhere that one test is skipped locally and required in CI.
chromium:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq chromium; \
	  else \
	    echo "note: /usr/bin/chromium missing and not root: the report's browser test will be skipped (CI requires it)"; \
	  fi; }

bench: install
	$(PY) benchmarks/store_size.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
