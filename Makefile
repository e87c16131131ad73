# The two commands of the README. Each creates or reuses .venv, installs what is
# needed (CPU torch 2.13.0 first, then the project with its exact pins), then runs.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test install clean-venv

$(STAMP): pyproject.toml requirements/lock-cpu.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found; run 'make PYTHON=/path/to/python3.11 ...'"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c requirements/lock-cpu.txt -e ".[dev]"
	# disentanglement_lib 1.5 for the DCI parity tests, by its no-TensorFlow route (docs/metrics.md)
	$(PY) -m pip install --quiet --no-deps disentanglement-lib==1.5 gin-config==0.4.0 absl-py==2.5.1
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/emorl sweep quickstart
	$(VENV)/bin/emorl report --sweep quickstart

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
