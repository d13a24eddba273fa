# d2v: the two set-up commands (see README.md). Each creates .venv and installs what it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PLUGINS := plugins/d2v-plugin-audio plugins/d2v-plugin-image plugins/d2v-plugin-text plugins/d2v-plugin-maskers
# installed for the tests only (not a dependency of d2v nor in d2v[all]): users pip install it themselves
TEST_PLUGINS := plugins/d2v-plugin-mlflow
STAMP := $(VENV)/.d2v-installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS) $(TEST_PLUGINS))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]" $(addprefix -e ,$(PLUGINS) $(TEST_PLUGINS))
	touch $(STAMP)

install: $(STAMP)

## Pretrain the audio plugin's tiny model on the demo clips it ships (a few minutes on 2 CPU cores).
demo: $(STAMP)
	$(BIN)/d2v pretrain --modality audio --out runs/demo-audio $(ARGS)

## Lint (ruff) and type-check (mypy) the core and the CLI (and ruff's I, F and B: import order,
## pyflakes and bugbear, on benchmarks, plugins and tests), then the whole test suite (slow
## end-to-end tests included). The settings of both tools are in pyproject.toml.
test: $(STAMP) lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n 2 $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check d2v_core cli
	$(BIN)/ruff check --select I,F,B benchmarks plugins tests
	$(BIN)/python -m mypy

clean:
	rm -rf $(VENV) runs
