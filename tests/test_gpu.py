"""CUDA checks (`pytest -m gpu`, run by `make gpu-check`): the half-precision edit agrees with
the fp32 CPU edit, and `profile` reports CUDA memory. Skipped where there is no GPU."""

import json

import numpy as np
import pytest
import torch

from bench.cases import make_case
from bench.run import item_of
from dragnext.config import build_config
from dragnext.edit import edit
from dragnext.model import load_model
from tests.conftest import FAST

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

# Mean |edited_cuda − edited_cpu| over the image, in 0..1 units. warp is geometry, inversion and
# denoising only; dragnext adds an optimisation whose Adam steps amplify bf16 rounding a little.
TOLERANCE = {"warp": 0.03, "dragnext": 0.06}


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    return load_model(tiny_model_dir, device="cpu"), load_model(tiny_model_dir, device="cuda")


@pytest.mark.parametrize("method", list(TOLERANCE))
def test_the_half_precision_cuda_edit_matches_the_fp32_cpu_edit(models, method):
    cpu, cuda = models
    assert cpu.dtype == torch.float32 and cuda.dtype in (torch.bfloat16, torch.float16)
    item = item_of(make_case("rotate", 0))
    config = build_config(overrides=[*FAST, f"method={method}"])
    images = [np.asarray(edit(item.image, item.instruction, m, config).image, np.float64) / 255
              for m in (cpu, cuda)]
    difference = float(np.abs(images[0] - images[1]).mean())
    print(f"{method}: mean |cuda {cuda.dtype} - cpu fp32| = {difference:.4f}")
    assert difference <= TOLERANCE[method]


def test_profile_on_cuda_reports_device_memory(tiny_model_dir, tmp_path):
    from bench import profile
    from dragnext import cli

    out = tmp_path / "profile.json"
    command = cli.parser(profile.add_commands)  # without the batch layer: Prefect need not be installed
    assert cli.main(["-q", "profile", "--model", str(tiny_model_dir), "--device", "cuda", "--size", "64",
                 "--repeat", "1", *[a for s in FAST for a in ("--set", s)], "--json", str(out)], command) == 0
    report = json.loads(out.read_text())
    assert report["device"].startswith("cuda") and report["peak_memory"]["kind"] == "cuda_max_allocated"
    assert report["dtype"] in ("bfloat16", "float16") and report["total"]["median_s"] > 0
