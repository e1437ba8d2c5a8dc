"""`bench.floor`: the bare UNet passes an edit made, timed, and each stage's efficiency, on
the CPU with the tiny model (`make gpu-check` runs the same on a GPU, eager and captured)."""

from __future__ import annotations

import pytest
import torch

from bench.floor import bare_passes, efficiency, efficiency_table, key, shapes_of
from bench.profile import profile
from dragnext.config import build_config
from dragnext.tiny_model import in_memory_model
from tests.conftest import FAST


def test_each_stage_is_bounded_by_its_own_passes_at_their_shapes():
    model = in_memory_model("sd15", "cpu", torch.float32, full_size=False)
    report = profile(model, build_config(overrides=[*FAST, "lora.batch_size=2"]), repeat=1, warmup=0)
    shapes = shapes_of(report)
    # inversion and PBSI's reference passes at 1 sample, its iterations with a gradient,
    # denoising's [reference, edited] pairs, LoRA's 2 views with a gradient
    assert shapes == {(1, False), (1, True), (2, False), (2, True)}
    floor = bare_passes(model, tuple(report["working_size"]), shapes, repeat=2)
    assert set(floor) == {key(*s) for s in shapes} and all(s > 0 for s in floor.values())
    rows = efficiency(report, floor)
    passes = report["unet_passes"]["by_stage"]
    assert set(rows) == {"lora", "inversion", "pbsi", "denoise"}
    pbsi = passes["pbsi"]
    expected = pbsi["backward"] * floor["1xfwd+bwd"] + (pbsi["forward"] - pbsi["backward"]) * floor["1xfwd"]
    assert abs(rows["pbsi"]["bound_s"] - expected) < 1e-3
    assert rows["denoise"]["bound_s"] == round(passes["denoise"]["forward"] * floor["2xfwd"], 4)
    for row in rows.values():
        assert row["efficiency"] == pytest.approx(row["bound_s"] / row["seconds"], abs=2e-3)  # both rounded
    assert "pbsi" in efficiency_table(rows)
    assert model.engine.mode == "off" and not model.passes.counts  # its own passes not counted as an edit's
