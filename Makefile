# Two commands set everything up: `make demo` and `make test`.
# Each creates .venv (Python 3.11) with the pinned requirements if it is missing.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test clean-venv

$(STAMP): requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -r requirements.txt
	$(VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python tools/train.py --flagfile=configs/demo.flags

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile tests

clean-venv:
	rm -rf $(VENV)
