"""The floor under an edit: how long the bare UNet passes it makes take, and how near each
stage comes to them.

A stage's bound is Σ over its UNet calls of the bare pass time at that call's shape: a
forward (no grad) at `forward_samples / forward` samples, or a forward with the input's
gradient at `backward_samples / backward` samples for the calls that also run backward
(PBSI's iterations, LoRA's steps; LoRA's backward reaches its adapters rather than the
input, close in cost). Its *efficiency* is bound ÷ stage seconds: 1 is an edit that does
nothing but its UNet passes at the speed `runtime.compile` gets from the hardware; the
rest is host work, launches and waits.

    floor = bare_passes(model, size, shapes_of(profile), mode="cuda_graphs")
    efficiency(profile, floor)  # {"pbsi": {"seconds": …, "bound_s": …, "efficiency": …}, …}
"""

from __future__ import annotations

import statistics
import time

import torch

from dragnext.model import DragModel

Shape = tuple[int, bool]  # (samples, with the input's gradient)


def _calls(counts: dict) -> list[tuple[Shape, int]]:
    """A stage's UNet calls as (shape, how many): its backward calls at their samples, the
    rest of its forwards without gradient."""
    calls = []
    if counts["backward"]:
        calls.append(((round(counts["backward_samples"] / counts["backward"]), True), counts["backward"]))
    plain = counts["forward"] - counts["backward"]
    if plain:
        samples = (counts["forward_samples"] - counts["backward_samples"]) / plain
        calls.append(((round(samples), False), plain))
    return calls


def shapes_of(profile: dict) -> set[Shape]:
    """The pass shapes a profiled edit made."""
    return {shape for counts in profile["unet_passes"]["by_stage"].values() for shape, _ in _calls(counts)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bare_pass(model: DragModel, z: torch.Tensor, timestep: torch.Tensor, cond, grad: bool) -> None:
    if grad:
        model.unet_output(z.clone().requires_grad_(True), timestep, cond).sum().backward()
    else:
        with torch.no_grad():
            model.unet_output(z, timestep, cond)


def bare_passes(model: DragModel, size: tuple[int, int], shapes: set[Shape], mode: str = "off",
                repeat: int = 10) -> dict[str, float]:
    """Median seconds of one bare UNet pass per shape, as {"<samples>x<fwd|fwd+bwd>": s}, on
    random latents of the working `size` (h, w) through `model`'s engine in `mode` (the
    first calls, untimed, compile and warm up)."""
    h, w = (s // model.architecture.vae_factor for s in size)
    channels = model.unet.config.in_channels
    cond = model.embed_prompt("", size)
    timestep = torch.tensor(500, device=model.device)
    before, model.engine.mode = model.engine.mode, mode
    times = {}
    try:
        for samples, grad in sorted(shapes):
            z = torch.randn(samples, channels, h, w, device=model.device)
            for _ in range(3):
                _bare_pass(model, z, timestep, cond, grad)
            runs = []
            for _ in range(repeat):
                _sync(model.device)
                start = time.perf_counter()
                _bare_pass(model, z, timestep, cond, grad)
                _sync(model.device)
                runs.append(time.perf_counter() - start)
            times[key(samples, grad)] = round(statistics.median(runs), 5)
    finally:
        model.engine.mode = before
        model.passes.reset()
    return times


def key(samples: int, grad: bool) -> str:
    return f"{samples}x{'fwd+bwd' if grad else 'fwd'}"


def profile_of(result) -> dict:
    """An `EditResult`'s stage seconds and UNet passes in the profile's form (a batch's
    items share both)."""
    return {"stages": {name: {"median_s": s} for name, s in result.timings.items()},
            "unet_passes": result.unet_passes}


def efficiency(profile: dict, floor: dict[str, float]) -> dict[str, dict]:
    """Per stage with UNet passes: its median seconds, its bound from `floor` and their ratio."""
    out = {}
    for stage, counts in profile["unet_passes"]["by_stage"].items():
        if stage not in profile["stages"]:
            continue
        seconds = profile["stages"][stage]["median_s"]
        bound = sum(n * floor[key(*shape)] for shape, n in _calls(counts))
        out[stage] = {"seconds": seconds, "bound_s": round(bound, 4),
                      "efficiency": round(bound / seconds, 3) if seconds else None}
    return out


def efficiency_table(rows: dict[str, dict]) -> str:
    lines = [f"{'stage':10s} {'seconds':>8s} {'bound':>8s} {'efficiency':>10s}", "-" * 39]
    lines += [f"{stage:10s} {r['seconds']:8.3f} {r['bound_s']:8.3f} {r['efficiency'] or 0:10.2f}"
              for stage, r in rows.items()]
    return "\n".join(lines)
