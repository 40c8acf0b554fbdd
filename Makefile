# Set-up and everyday tasks. Only Python 3.10+ is needed; everything else goes into .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch that these machines install from local disk; any torch>=2.4 works.
TORCH  ?= torch==2.13.0

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

demo: setup  ## audit the bundled digits CNN
	$(BIN)/eqaudit measure --spec sample_configs/digits.yaml

test: setup  ## run the test suite
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/measure_vs_ideal.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
