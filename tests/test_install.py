"""A non-editable install (`pip install .`) works from outside the checkout: the fixture
model and the demo's scenes are package data, not files beside a source tree."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cases import make_case
from tests.scenes import CASE_SEED, write_case

ROOT = Path(__file__).resolve().parents[1]
TORCH = os.environ.get("TORCH", "torch==2.13.0")  # the CPU build, as `make setup` pins it


@pytest.mark.slow
def test_a_non_editable_install_runs_the_demo_help_and_a_fixture_edit_from_outside_the_checkout(tmp_path):
    venv, outside = tmp_path / "venv", tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": ""}

    def run(*args, **kwargs):
        done = subprocess.run([str(a) for a in args], cwd=outside, env=env, capture_output=True,
                              text=True, timeout=1200, **kwargs)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python, dragnext = venv / "bin" / "python", venv / "bin" / "dragnext"
    run(python, "-m", "pip", "install", "-q", *TORCH.split())
    run(python, "-m", "pip", "install", "-q", ROOT)  # not -e
    where = run(python, "-c", "import flows, fixture; print(flows.__file__); print(fixture.FIXTURE_MODEL)")
    module, model = where.split()
    assert module.startswith(str(venv)) and model.startswith(str(venv))  # the copy, not the checkout

    assert "--out" in run(dragnext, "demo", "--help")
    image, instruction = write_case(make_case("translate", CASE_SEED), outside)
    run(dragnext, "-q", "edit", "--model", model, "--image", image, "--instruction", instruction,
        "--out", outside / "edited.png", "--device", "cpu")
    record = json.loads((outside / "edited.json").read_text())
    assert record["config"]["size"] == 64 and record["model"]["model"] == model  # the installed preset
