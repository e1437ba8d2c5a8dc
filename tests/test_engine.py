"""`runtime.compile` (`dragnext.engine`): the pieces a compiled engine captures trace as one
graph each, a mode the device cannot run is one config line, and (integration) an
inductor-compiled edit is today's edit, with no compile after the first batch of a shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo

from bench.cases import make_case
from bench.run import item_of
from dragnext.config import ConfigError, PbsiConfig, build_config
from dragnext.ddim import DDIMSchedule, denoise_step
from dragnext.edit import edit_batch
from dragnext.features import feature_hooks
from dragnext.geometry import RegionDrag
from dragnext.metrics import colour_mask, score_drag
from dragnext.model import load_model, model_preset
from dragnext.pbsi import Fill, Reference, fill_in, item_geometry, iteration_loss, x0_at
from dragnext.tiny_model import in_memory_model
from fixture import FIXTURE_MODEL
from tests.scenes import point

KINDS = ("translate", "rotate", "scale", "deform")


@pytest.fixture(scope="module")
def tiny():
    model = in_memory_model("sd15", "cpu", torch.float32, full_size=False)
    schedule = DDIMSchedule.from_scheduler(model.scheduler, 10).to(model.device)
    return model, schedule, model.embed_prompt("", (64, 64))


def breaks(fn, *args):
    torch._dynamo.reset()
    explained = torch._dynamo.explain(fn)(*args)
    return explained.graph_break_count, [(r.reason, [str(f) for f in r.user_stack[-3:]])
                                         for r in explained.break_reasons]


def test_a_pbsi_iteration_with_every_term_traces_as_one_graph(tiny):
    model, schedule, cond = tiny
    t, size = 6, (32, 32)
    config = PbsiConfig(loss="both", vacate="fill", keep_weight=1.0, keep_path=True)
    mask = torch.zeros(size, dtype=torch.bool)
    mask[10:16, 8:14] = True
    drags = [RegionDrag("translate", mask, point(11, 13), point(20, 15)),
             RegionDrag("rotate", mask, point(11, 13), point(9, 18), center=point(11, 11))]
    handles = mask.clone()
    editable = torch.ones(size, dtype=torch.bool)
    [geometry] = item_geometry(drags, editable, [0.5], model.device, config, handles, size)
    z_ref, z_t = torch.randn(2, 1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with feature_hooks(model.unet, [1, 2], size) as hooks:
        def forward(z, k):
            return model.predict_noise(z, schedule.timestep(k), cond, schedule.alphas[k]), hooks.pop()

        with torch.no_grad():
            eps_ref, F_ref = forward(z_ref, t)
            x0_ref = x0_at(schedule, z_ref, eps_ref, t, size)
        reference = Reference(F_ref, denoise_step(schedule, z_ref, eps_ref, t), x0_ref,
                              fill_in(x0_ref, Fill.of(~handles, model.device)))
        outside = torch.zeros(1, 1, 8, 8)
        count, reasons = breaks(iteration_loss, z_t.requires_grad_(True), t, forward, schedule, reference,
                                [geometry], outside, config)
    assert count == 0, reasons


def test_a_denoise_step_traces_as_one_graph(tiny):
    model, schedule, cond = tiny
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))

    def step(z_k, k):
        eps = model.predict_noise(z_k, schedule.timestep(k), cond, schedule.alphas[k])
        return denoise_step(schedule, z_k, eps, k)

    with torch.no_grad():
        count, reasons = breaks(step, z, 4)
    assert count == 0, reasons


def test_cuda_graphs_on_a_cpu_is_one_config_line(tiny):
    model, _, _ = tiny
    config = build_config(overrides=["runtime.compile=cuda_graphs"])
    with pytest.raises(ConfigError, match="runtime.compile: cuda_graphs needs a CUDA device, and this"):
        edit_batch([item_of(make_case("translate", seed=1))], model, config)
    compiled = build_config(overrides=["runtime.compile=inductor"])
    assert compiled.output_record() == build_config().output_record()  # left out of every digest


@pytest.mark.integration
def test_an_inductor_edit_is_the_eager_edit_and_compiles_once_per_shape():
    """The fixture model, one batch of every drag type: compiled, the edit stays within a
    grey level on average of eager (the CPU's vectorised sin in the timestep embedding and
    reordered sums differ from eager in the last bits, and 30 Adam steps carry that on), on
    target as often; a second batch of the same shapes compiles nothing."""
    model = load_model(str(FIXTURE_MODEL), device="cpu")
    preset = model_preset(FIXTURE_MODEL)

    def run(mode: str, seed: int) -> list:
        config = build_config(overrides=[f"runtime.compile={mode}", "runtime.batch_size=4"], preset=preset)
        return edit_batch([item_of(make_case(kind, seed=seed)) for kind in KINDS], model, config)

    torch._dynamo.reset()
    eager, compiled = run("off", 1), run("inductor", 1)
    graphs = dict(torch._dynamo.utils.counters["stats"])["unique_graphs"]
    for kind, a, b in zip(KINDS, eager, compiled, strict=True):
        difference = np.abs(np.asarray(a.image).astype(int) - np.asarray(b.image).astype(int))
        assert difference.mean() <= 0.5 and difference.max() <= 32, (kind, difference.mean(),
                                                                      difference.max())
        case = make_case(kind, seed=1)
        original, expected = case.object_masks()
        on_target = [score_drag(colour_mask(np.asarray(r.image), case.colour), expected, original).success
                     for r in (a, b)]
        assert on_target[0] == on_target[1], kind
    assert all(not isinstance(r, BaseException) for r in run("inductor", 2))
    assert dict(torch._dynamo.utils.counters["stats"])["unique_graphs"] == graphs
