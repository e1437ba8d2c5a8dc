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

.PHONY: setup test demo chaos overhead clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

test: setup
	$(BIN)/pytest

# The demo runs the batch flow (Prefect, ephemeral mode) over the shipped benchmark scenes
# (manifests/examples/bench: a translate, a deform and a rotate, twice) with the committed
# fixture model (fixture/README.md) and its preset, and stacks the previews.
demo: setup
	$(BIN)/dragnext demo --out $(DEMO_OUT)

clean:
	rm -rf $(VENV) build out

# The failure drill (README "Surviving faults"): 200 rows, 20 malformed, store outages, a
# worker killed, one retry; prints the table and writes docs/chaos-results.json.
chaos: setup
	$(BIN)/python -m infra.chaos --json docs/chaos-results.json

# What orchestration costs against a plain edit() loop, and 2 workers vs 1 (README).
overhead: setup
	$(BIN)/python -m bench.overhead --n 10 --json docs/overhead-n10.json
