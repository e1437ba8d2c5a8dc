"""What an edit costs before it runs: UNet passes per stage from the config alone (the
count `dragnext.profiling.PassCounter` measures), and GPU-hours from a measured profile.

A profile is what `make gpu-check` (docs/gpu-profile.json) or `make throughput`
(docs/throughput.json) writes: settings, each with `lora`, `batch` and `items_per_hour`.
"""

from __future__ import annotations

from dragnext.config import EditConfig


def unet_passes(config: EditConfig) -> dict[str, dict[str, int]]:
    """Forward and backward UNet passes one item makes, by stage (at batch 1; a batch of B
    makes the same passes, each B items wide). The `dragdiffusion` peer's count is an upper
    bound: it stops once every handle reached its target."""
    passes: dict[str, dict[str, int]] = {}
    if config.lora.enabled and config.lora.steps:
        passes["lora"] = {"forward": config.lora.steps, "backward": config.lora.steps}
    passes["inversion"] = {"forward": config.inversion.start_step, "backward": 0}
    if config.method == "dragnext":
        p = config.pbsi
        passes["pbsi"] = {"forward": p.steps * (p.iterations + 2), "backward": p.steps * p.iterations}
    elif config.method == "dragdiffusion":
        d = config.dragdiffusion
        passes["pbsi"] = {"forward": d.iterations + 1, "backward": d.iterations}
    if config.edit_step:
        passes["denoise"] = {"forward": config.edit_step, "backward": 0}
    return passes


def items_per_hour(profile: dict, config: EditConfig, batch_size: int | None) -> tuple[float, str] | None:
    """The measured rate for this config's LoRA setting at `batch_size` (None: the best
    measured), and the setting it came from; None when the profile has no such setting."""
    settings = {name: s for name, s in profile.get("settings", {}).items()
                if s.get("lora") == config.lora.enabled
                and (batch_size is None or s.get("batch") == batch_size)}
    if not settings:
        return None
    name = max(settings, key=lambda n: settings[n]["items_per_hour"])
    return settings[name]["items_per_hour"], name


def estimate(items: int, config: EditConfig, profile: dict | None) -> dict:
    """UNet passes for `items` items and, given a profile, the device-hours they take."""
    per_item = unet_passes(config)
    total = {kind: items * sum(p[kind] for p in per_item.values()) for kind in ("forward", "backward")}
    out: dict = {"items": items, "unet_passes_per_item": per_item, "unet_passes": total}
    rate = items_per_hour(profile, config, config.runtime.batch_size) if profile else None
    if rate is not None:
        out.update(device_hours=round(items / rate[0], 3), profile_setting=rate[1],
                   profile_device=profile.get("device", "unknown"))
    return out
