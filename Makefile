# One command sets up and runs the demo, one sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch. Left unpinned, pip pulls a multi-GB CUDA build; on a GPU machine
# pass the build you want, e.g. `make setup TORCH="torch==2.13.0 --index-url ..."`.
TORCH ?= torch==2.13.0
DEMO_OUT ?= out/demo

export OMP_WAIT_POLICY := PASSIVE
export HF_HUB_OFFLINE := 1

.PHONY: setup test demo clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

test: setup
	$(BIN)/pytest

build/tiny-model: | setup
	$(BIN)/dragnext -q tiny-model $@

# The demo runs the batch flow (Prefect, ephemeral mode) over the shipped synthetic
# manifest. The tiny model has random weights: the demo shows the whole pipeline working
# (images, previews, records, results.parquet), not an edit worth looking at. Any
# SD1.5-architecture model works with --model.
demo: setup build/tiny-model
	$(BIN)/dragnext run manifests/examples/synthetic/manifest.parquet --output $(DEMO_OUT) \
		--model build/tiny-model --set size=64
	@echo "previews: $(DEMO_OUT)/items/*/preview.png, results: $(DEMO_OUT)/results.parquet"

clean:
	rm -rf $(VENV) build out
