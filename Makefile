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

.PHONY: setup docs docs-serve test test-integration test-ui test-all demo studio studio-screenshots preview-timing photo-memory chaos overhead throughput manifest-scale family-profiles gpu-check \
	review-thresholds \
	gpu-wheels clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

# The docs site (mkdocs.yml, pages under docs/) into build/site. --strict: a broken internal link,
# anchor or image, or a page left out of the nav, fails the build. The configuration and CLI
# reference pages are generated from the code (command/reference.py).
$(VENV)/.docs-installed: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[docs]"
	touch $@

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

# The fast suite (unit tests: the library, manifests, storage, command-line checks; a few
# minutes on 2 cores). `test-integration` runs the real runs: the dragnext command through
# Prefect and worker processes, S3 (moto), the work pools, the faults. CI runs both.
test: setup
	$(BIN)/pytest

test-integration: setup
	$(BIN)/pytest -m "integration and not slow and not gpu"

# The studio and the Prefect UI in a real headless Chromium (Debian's chromium and
# chromium-driver); `studio-screenshots` writes the README's pictures to docs/.
test-ui: setup
	$(BIN)/pytest -m ui

studio-screenshots: setup
	DRAGNEXT_SCREENSHOTS=docs $(BIN)/pytest -m ui

test-all: test test-integration test-ui

# The studio's instant preview by image size and drags, against its 1 s bound (docs/guides/studio.md).
preview-timing: setup
	$(BIN)/python -m bench.instant_preview --json docs/instant-preview.json

# Peak memory and time of one `dragnext edit` of a 1024-4096 px photo, crop on and off (docs/guides/photos.md).
photo-memory: setup
	$(BIN)/python -m bench.photo_memory --json docs/photo-memory.json

# Author drags and review results in the browser, on the fixture model and the demo scenes.
studio: setup
	$(BIN)/dragnext studio --allow-prefix $(CURDIR)/manifests/examples/bench --write-prefix $(CURDIR)/out/authored

# The demo runs the batch flow (Prefect, ephemeral mode) over the shipped benchmark scenes
# (manifests/examples/bench: a translate, a deform, a rotate and a scale, twice) with the committed
# fixture model (fixture/README.md) and its preset, scores each edit against its expected image
# (success, neighbour IoU) and stacks the previews.
demo: setup
	$(BIN)/dragnext demo --out $(DEMO_OUT)

clean:
	rm -rf $(VENV) build out

# The failure drill (docs/guides/faults.md): 180 good rows and every malformed kind on S3,
# store outages, a worker killed, a second run into the same output, one retry, an edited row
# and a deleted output, a disk that fills (a capped tmpfs: root only); prints the table and
# writes docs/chaos-results.json.
chaos: setup
	$(BIN)/python -m infra.chaos --json docs/chaos-results.json

# What orchestration costs against a plain edit() loop, and 2 workers vs 1 (docs/guides/scale.md).
overhead: setup
	$(BIN)/python -m bench.overhead --n 10 --json docs/overhead-n10.json

# Items/hour of `dragnext run` by batch size (1, 2, 4, 8), 1 worker x 2 threads and 2 workers x 1
# thread, LoRA off and on, with the bench's success per type; about an hour on 2 cores (docs/guides/batched-editing.md).
throughput: setup
	$(BIN)/python -m bench.throughput --json docs/throughput.json

# Validate+plan 1 000, 10 000 and 100 000-row manifests on moto S3, and merge 100 000 results rows:
# seconds, peak memory, bytes read from the store (docs/guides/scale.md).
manifest-scale: setup
	$(BIN)/python -m bench.manifest_scale --json docs/manifest-scale.json

# One PBSI iteration of each family's full-size random model at its native size (SD1.5 512,
# SD2.1 512, SD2.1-v 768, SDXL 1024) through `dragnext tiny-model --full-size` and
# `dragnext profile`; models kept in build/families (27 GB); writes docs/family-profiles.json.
family-profiles: setup
	$(BIN)/python -m bench.family_profiles --json docs/family-profiles.json

# The review flags' defaults (`review.*`): DragNeXt on the benchmark's tuning seeds (1000-1029)
# and the reported seed (0), 30 cases per type each (about 11 minutes each here), then
# bench/review_thresholds.py picks the thresholds on the first and reports them on the second.
review-thresholds: setup
	$(BIN)/dragnext -q bench --n 30 --seed 1000 --jobs 2 --out out/bench-tune \
		--methods 'dragnext;dragnext:output.paste_moved=false' --json docs/review/bench-seed1000.json
	$(BIN)/dragnext -q bench --n 30 --seed 0 --jobs 2 --out out/bench-seed0 \
		--methods 'dragnext;dragnext:output.paste_moved=false' --json docs/review/bench-seed0.json
	$(BIN)/python -m bench.review_thresholds --tune docs/review/bench-seed1000.json \
		--report docs/review/bench-seed0.json --json docs/review/thresholds-preset.json
	$(BIN)/python -m bench.review_thresholds --tune docs/review/bench-seed1000.json \
		--report docs/review/bench-seed0.json --method dragnext:output.paste_moved=false \
		--json docs/review-thresholds.json

# On a CUDA machine: the SD1.5-size model, `pytest -m gpu`, `dragnext profile` at 512 px with
# LoRA on and off; writes docs/gpu-profile.json (bench/gpu_check.py). Needs no network: with
# the project installed (`make setup TORCH=...`), or on a box without network, from the
# working tree plus carried wheels (`make gpu-wheels` where there is network):
#   pip install --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site make gpu-check GPU_PY=python3
# On a lease, bound it and keep the JSON where it comes back, e.g.
#   GPU_CHECK_ARGS="--budget-s 360 --json $OUT/gpu-profile.json"
GPU_PY ?= $(BIN)/python
gpu-check:
	$(GPU_PY) -m bench.gpu_check --json docs/gpu-profile.json $(GPU_CHECK_ARGS)

# Wheels (Python 3.12, x86-64 Linux) of this venv's versions of what a stock CUDA PyTorch
# image lacks for gpu-check, or has older than these need; torch, transformers, accelerate and pytest
# are expected there.
GPU_WHEELS := diffusers|peft|pydantic|pydantic_core|annotated-types|typing-inspection|typing_extensions|importlib_metadata|lazy-importer|zipp
gpu-wheels: setup
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $$($(BIN)/pip freeze | grep -E '^($(GPU_WHEELS))==')
