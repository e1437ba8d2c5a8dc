"""`dragnext run` of the demo manifest on the SDXL tiny model, as a user runs it: the real
command in its own process, the progress bar on, two worker processes."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from dragnext.tiny_model import save_tiny_model
from manifests.examples import DEMO_MANIFEST
from manifests.schema import read_table
from tests.conftest import FAST
from tests.scenes import dragnext_command

pytestmark = pytest.mark.integration


def test_the_demo_manifest_runs_on_the_sdxl_tiny_model_with_a_style_lora(tmp_path):
    from tests.test_families import style_lora

    model = save_tiny_model(tmp_path / "sdxl", arch="sdxl")
    lora, _ = style_lora(model, tmp_path / "style.safetensors")
    out = tmp_path / "out"
    sets = [a for s in FAST for a in ("--set", s)]
    done = subprocess.run(dragnext_command() + ["run", str(DEMO_MANIFEST), "--output", str(out), "--model",
                                                str(model), "--lora", str(lora), "--workers", "2", *sets],
                          capture_output=True, text=True, timeout=900, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "8 succeeded" in done.stdout and "8/8" in done.stderr  # the items bar
    assert "[transformers]" not in done.stderr and "torchvision" not in done.stderr  # no noise
    assert "loaded model" not in done.stderr  # the workers' lines go to the run's logs, not under the bar
    rows = read_table(str(out / "results.parquet")).to_pylist()
    assert {r["status"] for r in rows} == {"succeeded"} and len(rows) == 8
    records = [json.loads(Path(r["record_uri"]).read_text()) for r in rows]
    kinds = {rec["item"]["drags"][0]["type"] for rec in records}
    assert kinds == {"translate", "deform", "rotate", "scale"}
    for rec in records:
        assert rec["model"]["architecture"]["family"] == "sdxl" and rec["model"]["lora"] == str(lora)
        assert str(lora) in rec["model_fingerprint"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lora"] == str(lora) and summary["model"] == str(model)
