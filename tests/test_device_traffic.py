"""Inner loops that never make the host wait for the device (issue 34), counted on meta
tensors standing for a GPU (`dragnext.device_traffic`): no scalar read, no device→host
copy and no host→device copy (a pageable upload blocks the host too) inside a PBSI
iteration, an inversion step, a denoise step or a LoRA step, for every method, LoRA on and
off; and the precomputed geometry equal to the geometry it replaced."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dragnext.lora
from bench.cases import make_case
from bench.run import item_of
from dragnext.config import PbsiConfig, build_config
from dragnext.device_traffic import DeviceTraffic, on_meta
from dragnext.edit import edit_batch
from dragnext.features import FeatureMap
from dragnext.geometry import RegionDrag, eta, sample
from dragnext.pbsi import Fill, fill_in, geometry_plan, held_out, item_geometry, keep_at, region_loss
from dragnext.tiny_model import in_memory_model
from tests.conftest import FAST
from tests.scenes import point

STAGES = ("lora", "inversion", "pbsi", "denoise")


class Unfused(torch.optim.AdamW):  # the fused kernel has no meta implementation
    def __init__(self, params, lr, fused):
        assert fused
        super().__init__(params, lr=lr)


def traffic_of(method: str, *overrides: str, monkeypatch, arch: str = "sd15") -> tuple[DeviceTraffic, list]:
    """An edit of a translate and a rotate, batched, on meta; each stage's progress marks a
    phase, so phase `pbsi:j` is what runs between the ends of iterations j and j + 1."""
    monkeypatch.setattr(dragnext.lora.torch.optim, "AdamW", Unfused)
    model = on_meta(in_memory_model(arch, "cpu", torch.float32, full_size=False))
    timesteps = []
    unet_forward = model.unet.forward

    def watched(sample, timestep, *args, **kwargs):
        timesteps.append(timestep)
        return unet_forward(sample, timestep, *args, **kwargs)

    monkeypatch.setattr(model.unet, "forward", watched)
    config = build_config(overrides=[*FAST, f"method={method}", "lora.steps=3", *overrides])
    traffic = DeviceTraffic()
    items = [item_of(make_case(kind, seed=1)) for kind in ("translate", "rotate")]
    with traffic:
        edit_batch(items, model, config, callback=lambda stage, done, total: traffic.mark(f"{stage}:{done}"))
    return traffic, timesteps


def inner_phases(traffic: DeviceTraffic) -> dict[str, list[str]]:
    """Per stage, its phases but the last (which holds the stage's end and the next one's
    start: reading results back, moving the next stage's inputs)."""
    phases: dict[str, list[str]] = {}
    for phase in traffic.ops:  # in the order they ran
        stage = phase.split(":")[0]
        if stage in STAGES:
            phases.setdefault(stage, []).append(phase)
    return {stage: found[:-1] for stage, found in phases.items()}


CASES = {
    "dragnext": ("dragnext",),
    "dragnext, LoRA off": ("dragnext", "lora.enabled=false"),
    "dragnext, v-prediction": ("dragnext", "lora.enabled=false"),  # ε from v needs ᾱ at every call
    "dragnext, every term": ("dragnext", "pbsi.loss=both", "pbsi.vacate=fill", "pbsi.keep_weight=1",
                             "pbsi.keep_path=true", "pbsi.init=warp", "pbsi.eta_steps=1"),
    "warp": ("warp",),
    "warp, LoRA off": ("warp", "lora.enabled=false"),
    "dragdiffusion": ("dragdiffusion", "dragdiffusion.iterations=4"),
    "dragdiffusion, LoRA off": ("dragdiffusion", "dragdiffusion.iterations=4", "lora.enabled=false"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_no_step_of_an_inner_loop_waits_for_the_device_or_uploads(case, monkeypatch):
    method, *overrides = CASES[case]
    arch = "sd21-v" if "v-prediction" in case else "sd15"
    traffic, timesteps = traffic_of(method, *overrides, monkeypatch=monkeypatch, arch=arch)
    phases = inner_phases(traffic)
    expected = {"inversion", "denoise"} | ({"lora"} if "lora.enabled=false" not in overrides else set()) \
        | ({"pbsi"} if method != "warp" else set())
    assert set(phases) == expected and all(phases.values())
    for stage, found in phases.items():
        # dragdiffusion's stopping rule reads whether every handle arrived: one read a step of
        # each of the two items (it edits them one after the other, so their steps share a phase)
        allowed = 2 if (stage, method) == ("pbsi", "dragdiffusion") else 0
        assert all(traffic.syncs[p] == allowed for p in found), (stage, traffic.sync_ops)
        assert all(traffic.uploads[p] == 0 for p in found), (stage, {p: traffic.uploads[p] for p in found})
        # the edit's geometry goes up before its first iteration, pinned and non-blocking
        assert all(traffic.async_uploads[p] == 0 for p in found), (stage, dict(traffic.async_uploads))
    # the UNet is handed its timestep as a tensor already on the device: diffusers builds one
    # from an int at every call, an upload this counter cannot see
    assert timesteps and all(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in timesteps)


def drags_of_each_kind() -> list[RegionDrag]:
    size = (24, 32)
    mask = torch.zeros(size, dtype=torch.bool)
    mask[8:14, 6:12] = True
    return [RegionDrag("translate", mask, point(9, 11), point(20, 13)),
            RegionDrag("rotate", mask, point(11, 11), point(9, 16), center=point(9, 11)),
            RegionDrag("scale", mask, point(11, 11), point(13, 11), center=point(9, 11)),
            RegionDrag("deform", mask, point(11, 11), point(15, 12), center=point(6, 11))]


def region_loss_before(F_k, F_ref, drags, progress):
    """The region term as it was computed before the geometry was planned (per iteration, on
    the host, uploaded each time)."""
    loss = F_k.new_zeros(())
    for drag in drags:
        rho = drag.target_region(progress)
        if rho.any():
            F_source = sample(F_ref, drag.correspondence(progress).to(F_k.device))
            distance = (F_k - F_source).abs().sum(dim=1)[0]
            loss = loss + (distance * rho.to(distance.dtype)).sum() / int(rho.sum())
    return loss


def upsampled(maps: FeatureMap) -> torch.Tensor:
    """F as it was made before it was read at points: every block upsampled, concatenated."""
    return torch.cat([F.interpolate(m, size=maps.size, mode="bilinear", align_corners=False)
                      for m in maps.maps], dim=1)


def test_the_planned_geometry_and_the_point_sampled_features_are_those_of_each_iteration():
    drags = drags_of_each_kind()
    T, T_prime, K = 8, 3, 4
    progresses = [eta(t, k, T, T_prime, K) for t in range(T, T_prime - 1, -1) for k in range(1, K + 1)]
    handles = torch.stack([d.handle_mask for d in drags]).any(0)
    plan = geometry_plan(drags, progresses, torch.device("cpu"), handles)
    generator = torch.Generator().manual_seed(0)
    # two blocks at F's half and quarter size, as the UNet's decoder gives them
    F_k, F_ref = (FeatureMap((torch.randn(1, 3, 12, 16, generator=generator),
                              torch.randn(1, 5, 6, 8, generator=generator)), (24, 32)) for _ in range(2))
    assert len(plan) == len(progresses)
    for geometry, progress in zip(plan, progresses, strict=True):
        for target, drag in zip(geometry.targets, drags, strict=True):
            rho, used = drag.target_region(progress), target.weight > 0
            assert torch.allclose(target.weight[used], torch.tensor(1 / int(rho.sum())))
            x, y = target.pixels[used].long().T
            assert torch.equal(torch.zeros_like(rho).index_put_((y, x), torch.tensor(True)), rho)
            sources = drag.correspondence(progress)[0, y, x]
            assert torch.allclose(target.sources[used], sources, atol=1e-6, rtol=0)
        # static shapes: each drag has as many points at every iteration
        assert [len(t.weight) for t in geometry.targets] == [len(t.weight) for t in plan[0].targets]
        rhos = torch.stack([d.target_region(progress) for d in drags]).any(0)
        assert torch.equal(geometry.vacated[0].bool(), handles & ~rhos)
        before = region_loss_before(upsampled(F_k), upsampled(F_ref), drags, progress)
        assert torch.allclose(region_loss(F_k, F_ref, geometry), before, atol=1e-6, rtol=1e-6)


def test_point_sampled_features_equal_the_upsampled_map_in_and_around_it():
    generator = torch.Generator().manual_seed(3)
    maps = FeatureMap((torch.randn(2, 3, 6, 8, generator=generator),
                       torch.randn(2, 4, 12, 16, generator=generator)), (24, 32))
    dense = upsampled(maps)
    ys, xs = torch.meshgrid(torch.arange(24.0), torch.arange(32.0), indexing="ij")
    assert torch.allclose(maps.at(torch.stack([xs.flatten(), ys.flatten()], -1)), dense.flatten(2),
                          atol=1e-6, rtol=1e-6)
    grid = torch.rand(400, 2, generator=generator) * 2.4 - 1.2  # past the border: zero padding
    assert torch.allclose(maps.sample(grid), sample(dense, grid[None, None])[:, :, 0], atol=1e-6, rtol=1e-6)


def test_the_planned_keep_region_is_keep_at_each_progress():
    drags = drags_of_each_kind()[:2]
    editable = torch.ones(24, 32, dtype=torch.bool)
    config = PbsiConfig(keep_weight=1.0, keep_path=True)
    progresses = [0.25, 0.5, 1.0, 1.0]
    plan = item_geometry(drags, editable, progresses, torch.device("cpu"), config, None, (24, 32))
    fixed = held_out(drags, True)
    for geometry, progress in zip(plan, progresses, strict=True):
        assert geometry.vacated is None
        assert torch.equal(geometry.keep[0].bool(), keep_at(editable, fixed, drags, progress, True))
    assert plan[2] is plan[3]  # a progress held at 1 is planned once
    without_path = item_geometry(drags, editable, progresses, torch.device("cpu"),
                                 config.model_copy(update={"keep_path": False}), None, (24, 32))
    swept = keep_at(editable, held_out(drags, False), drags, 0.25, False)
    assert all(torch.equal(g.keep[0].bool(), swept) for g in without_path)  # K does not depend on η


def test_a_planned_fill_fills_as_the_host_mask_does_without_asking_the_device():
    known = torch.ones(16, 16, dtype=torch.bool)
    known[4:11, 3:9] = False
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(fill_in(x, Fill.of(known, torch.device("cpu"))), fill_in(x, known))
    traffic = DeviceTraffic()
    plan = Fill.of(known, torch.device("meta"))
    with traffic:
        fill_in(torch.zeros(1, 4, 16, 16, device="meta"), plan)
    assert not traffic.syncs and not traffic.uploads
