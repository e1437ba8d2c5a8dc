"""`dragnext profile`: seconds, UNet passes and peak memory of one edit, per stage.

`--warmup` edits (default 1: it pays for kernel selection, `torch.compile`, allocator
growth), then `--repeat` timed edits of a built-in item: a rotate drag on a benchmark scene, edited at the
working size `--size`. Stage times are taken with the device synchronised around each stage
(`dragnext.graph.run_graph`), so they are real on CUDA too.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import diffusers
import torch

from bench.cases import make_case
from bench.run import item_of
from dragnext import cli as library_cli
from dragnext.config import EditConfig, build_config, read_config_file
from dragnext.edit import STAGES, EditResult, edit
from dragnext.model import DragModel, load_model, model_preset

PROFILE_CASE = ("rotate", 0)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def profile(model: DragModel, config: EditConfig, repeat: int, warmup: int = 1) -> dict:
    """The profile JSON: per stage the median and every run's seconds, the UNet passes, the
    peak memory (the largest of the timed runs), and the total."""
    item = item_of(make_case(*PROFILE_CASE))
    run = lambda: edit(item.image, item.instruction, model, config, item_id="profile")
    for _ in range(warmup):
        run()
    results: list[EditResult] = [run() for _ in range(repeat)]
    stages = {name: {"median_s": round(statistics.median(r.timings[name] for r in results), 4),
                     "runs_s": [r.timings[name] for r in results]} for name in STAGES}
    totals = [sum(r.timings.values()) for r in results]
    peak = max(results, key=lambda r: r.peak_memory["mb"]).peak_memory
    return {
        "model": str(model.source), "family": model.architecture.family, "device": str(model.device),
        "device_name": device_name(model.device),
        "dtype": str(model.dtype).removeprefix("torch."), "torch": torch.__version__,
        "diffusers": diffusers.__version__, "working_size": list(results[-1].working_size),
        "warmup": warmup, "repeat": repeat, "stages": stages, "unet_passes": results[-1].unet_passes,
        "peak_memory": peak, "total": {"median_s": round(statistics.median(totals), 4), "runs_s": totals},
        "config": config.to_record(),
    }


def table(report: dict) -> str:
    passes = report["unet_passes"]["by_stage"]
    lines = [f"{report['model']} on {report['device_name']} ({report['dtype']} UNet), "
             f"{report['working_size'][1]}x{report['working_size'][0]} px, median of {report['repeat']}",
             f"{'stage':10s} {'seconds':>8s} {'UNet fwd':>9s} {'UNet bwd':>9s}", "-" * 39]
    for name, stage in report["stages"].items():
        counts = passes.get(name, {"forward": 0, "backward": 0})
        lines.append(f"{name:10s} {stage['median_s']:8.3f} {counts['forward']:9d} {counts['backward']:9d}")
    total = report["unet_passes"]["total"]
    lines += ["-" * 39, f"{'total':10s} {report['total']['median_s']:8.3f} {total['forward']:9d} "
              f"{total['backward']:9d}",
              f"peak memory {report['peak_memory']['mb']:.0f} MB ({report['peak_memory']['kind']})"]
    return "\n".join(lines)


def cmd_profile(args: argparse.Namespace) -> int:
    sets = args.set + ([f"size={args.size}"] if args.size else [])
    config = build_config(read_config_file(args.config) if args.config else None, sets,
                          preset=model_preset(args.model))
    model = load_model(library_cli.model_source(args), device=args.device)
    config.check_model(model.architecture)
    report = profile(model, config, args.repeat, args.warmup)
    print(table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def add_commands(commands) -> None:
    command = commands.add_parser("profile", help="time one edit per stage: seconds, UNet passes, "
                                  "peak memory")
    library_cli.add_model_arguments(command)
    command.add_argument("--device", help="cuda, cuda:1, cpu (default: CUDA when present)")
    command.add_argument("--size", type=int, help="working size, the longer side in px (default: the "
                         "model's preset, else its native size: 512 SD1.x, 768 SD2.x-v, 1024 SDXL)")
    command.add_argument("--repeat", type=int, default=3, help="timed edits after the warm-up (default 3)")
    command.add_argument("--warmup", type=int, default=1, help="untimed edits first (default 1)")
    command.add_argument("--json", help="write the report here")
    library_cli.add_config_arguments(command)
    command.set_defaults(run=cmd_profile)
