# The two commands of the README. Both create (or refresh) .venv from nothing but this repo.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch/torchvision are installed first and pinned: the reference fixtures were produced with 2.14.1.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test venv clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/doei demo --out demo_out

test: $(VENV)/.installed
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo_out
