# Two commands for a fresh machine: `make demo` and `make test`.
# Each creates (or reuses) the project's virtual environment in .venv on its own.
PYTHON ?= python3
VENV ?= .venv
# torch first and pinned, so that the package's range is already satisfied and pip pulls
# nothing bigger; on a GPU machine set TORCH_SPEC to the build you want.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.hydrapicker-installed

.PHONY: demo test test-all install clean pretrained

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/hydrapicker demo --out demo-output

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -m ""

# The shipped generic model (MODEL_CARD.md): simulate, train (resumable: rerun to continue), ship.
pretrained: $(STAMP)
	scripts/train_pretrained.sh

clean:
	rm -rf $(VENV) demo-output
