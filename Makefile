# The two front-door commands (see README): `make demo` and `make test`.
# Both create .venv and install the pinned dependencies on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: demo test install

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Pinned first: this torch's CPU build lies on local disk; a bare `torch` can pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

demo: install
	$(VENV)/bin/interest-updater demo $(ARGS)

test: install
	$(PY) -m pytest -q
