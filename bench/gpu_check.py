"""`make gpu-check`: everything a CUDA machine can tell us, in one run.

1. builds the SD1.5-architecture random-weight model (`tiny-model --arch sd15 --full-size`)
   unless present;
2. runs `pytest -m gpu` (the half-precision CUDA edit against the fp32 CPU edit, a profile);
3. profiles one 512 px edit of that model with LoRA on (the paper's full edit) and off
   (drag only), stage by stage;
4. edits batches of 4 and 8 items (`edit_batch`, LoRA on and off; batch 1 is step 3's
   edit): items/hour and peak memory per setting, in the profile format `dragnext plan
   --profile` reads (`settings`);
5. the floor (`bench.floor`): the bare UNet passes those edits and a drag-only batch of 8
   made, eager and captured (`runtime.compile=cuda_graphs`), and each stage's efficiency
   (bound ÷ seconds); then a drag-only edit compiled with CUDA graphs, its efficiency and
   its difference from the eager edit (`floor`, `captured`: their compiles take minutes);
6. profiles one 1024 px edit of SDXL's full-size random model (built on the GPU, in memory)
   with LoRA off and on (`sdxl_profiles`);
and writes it all with the test outcome to `--json` (docs/gpu-profile.json).

It needs no network: the working tree plus the project's dependencies are enough. On a box
without them, carry wheels (`make gpu-wheels` on a machine with network, README "A GPU box
from zero") and put them on PYTHONPATH; Prefect, s3fs and moto are not needed here.

    python -m bench.gpu_check [--model build/sd15] [--size 512] [--repeat 3] [--budget-s S]
                              [--only SECTIONS] [--json docs/gpu-profile.json]

The JSON is rewritten after each section (tests, SD1.5 profiles, batches, floor, captured,
SDXL), so a run cut short by its lease keeps what it measured, and a section that raises is
recorded as its error and the next one runs; `--budget-s` starts no section past that time.
Measured on an H200 (2026-11-30, docs/gpu-profile.json): tests 27 s, building the model 62 s,
one full 512 px edit 40.5 s and a drag-only one 10.7 s, batches about 3 minutes, SDXL about
3 minutes: on a 10-minute call use `--repeat 1` and `--budget-s 400`; the floor and the
captured edit (not measured yet) on a call of their own: `--only profiles,floor,captured`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.profile import profile, table
from dragnext.config import build_config
from dragnext.model import default_unet_dtype, load_model
from dragnext.tiny_model import in_memory_model, save_tiny_model

VARIANTS = {"lora_on": [], "lora_off": ["lora.enabled=false"]}
BATCHES = (4, 8)  # batch 1 is the profile's own edit


def batch_settings(model, size: int, profiles: dict) -> dict:
    """Items/hour and peak memory of `edit_batch` over B benchmark cases: batch 1 from the
    profiles (median of their timed edits), larger batches timed once each (the profiles
    warmed the kernels and the allocator)."""
    from bench.cases import TYPES, make_case
    from bench.run import item_of
    from dragnext.edit import edit_batch

    settings = {}
    for lora in (False, True):
        single = profiles["lora_on" if lora else "lora_off"]
        settings[f"lora {'on' if lora else 'off'}, batch 1"] = {
            "lora": lora, "batch": 1, "seconds": single["total"]["median_s"],
            "items_per_hour": round(3600 / single["total"]["median_s"], 1),
            "peak_mb": single["peak_memory"]["mb"], "failed": [], "from": "profiles"}
        for batch in BATCHES:
            config = build_config(overrides=[f"size={size}", f"lora.enabled={str(lora).lower()}",
                                             f"runtime.batch_size={batch}"])
            items = [item_of(make_case(TYPES[i % len(TYPES)], seed=i)) for i in range(batch)]
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            results = edit_batch(items, model, config)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            failed = [str(r) for r in results if isinstance(r, BaseException)]
            name = f"lora {'on' if lora else 'off'}, batch {batch}"
            settings[name] = {"lora": lora, "batch": batch, "seconds": round(seconds, 2),
                              "items_per_hour": round(batch / seconds * 3600, 1),
                              "peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                              "failed": failed}
            print(f"{name}: {settings[name]['items_per_hour']} items/h, peak {settings[name]['peak_mb']} MB",
                  flush=True)
    return settings


def floor_section(model, size: int, profiles: dict) -> dict:
    """For batch 1 (the profiles' edits) and batch 8 (one drag-only `edit_batch`): the bare
    UNet passes each edit made, eager and captured (`runtime.compile=cuda_graphs`), and each
    stage's efficiency against both."""
    from bench.cases import TYPES, make_case
    from bench.floor import bare_passes, efficiency, efficiency_table, profile_of, shapes_of
    from bench.run import item_of
    from dragnext.edit import edit_batch

    config = build_config(overrides=[f"size={size}", "lora.enabled=false", "runtime.batch_size=8"])
    batch = edit_batch([item_of(make_case(TYPES[i % len(TYPES)], seed=i)) for i in range(8)], model, config)
    edits = {**{f"{name}, batch 1": p for name, p in profiles.items()},
             "lora_off, batch 8": profile_of(batch[0])}
    shapes = set().union(*(shapes_of(p) for p in edits.values()))
    out = {"edits": {name: {"stages": p["stages"], "unet_passes": p["unet_passes"]}
                     for name, p in edits.items()}}
    for mode in ("off", "cuda_graphs"):
        out[mode] = bare_passes(model, (size, size), shapes, mode)
        print(f"bare UNet passes, compile={mode}: {out[mode]}", flush=True)
    out["efficiency"] = {f"{name} vs {mode}": efficiency(p, out[mode])
                         for name, p in edits.items() for mode in ("off", "cuda_graphs")}
    for name, rows in out["efficiency"].items():
        print(f"\nefficiency, {name}:\n{efficiency_table(rows)}", flush=True)
    return out


def captured_profile(model, size: int) -> dict:
    """A drag-only edit with `runtime.compile=cuda_graphs` (its warm-up compiles), its
    efficiency against the captured floor, and the largest pixel difference from eager."""
    from bench.cases import make_case
    from bench.floor import bare_passes, efficiency, efficiency_table, shapes_of
    from bench.profile import PROFILE_CASE
    from bench.run import item_of
    from dragnext.edit import edit

    report = profile(model, build_config(overrides=[f"size={size}", "lora.enabled=false",
                                                   "runtime.compile=cuda_graphs"]), repeat=1)
    floor = bare_passes(model, (size, size), shapes_of(report), "cuda_graphs")
    report["efficiency"] = efficiency(report, floor)
    item = item_of(make_case(*PROFILE_CASE))
    images = [np.asarray(edit(item.image, item.instruction, model, build_config(overrides=[
        f"size={size}", "lora.enabled=false", f"runtime.compile={mode}"])).image).astype(int)
        for mode in ("off", "cuda_graphs")]
    difference = np.abs(images[0] - images[1])
    report["against_eager"] = {"max": int(difference.max()), "mean": round(float(difference.mean()), 3)}
    print(f"\ncaptured, drag only:\n{table(report)}\n{efficiency_table(report['efficiency'])}\n"
          f"|captured - eager| grey levels: {report['against_eager']}", flush=True)
    return report


def sdxl_profiles() -> dict:
    """SDXL at its native 1024 px: LoRA off (a warm-up, then timed) and on (timed once)."""
    device = torch.device("cuda")
    model = in_memory_model("sdxl", device, default_unet_dtype(device))
    out = {}
    for name, sets, warmup in (("lora_off", ["lora.enabled=false"], 1), ("lora_on", [], 0)):
        out[name] = profile(model, build_config(overrides=sets), repeat=1, warmup=warmup)
        print(f"\nsdxl {name}:\n{table(out[name])}", flush=True)
    return out


def gpu_tests() -> dict:
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-s", "-p", "no:cacheprovider",
                           "tests/test_gpu.py", "tests/test_edit.py", "tests/test_model_stages.py"],
                          capture_output=True, text=True)
    print(done.stdout[-4000:], done.stderr[-2000:], sep="\n")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return {"returncode": done.returncode, "summary": lines[-1] if lines else "",
            "measured": [line for line in lines if "mean |cuda" in line]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="build/sd15",
                        help="built here with --arch sd15 --full-size if absent")
    parser.add_argument("--no-sdxl", action="store_true", help="skip the SDXL profiles at 1024 px")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no section after this many seconds (a lease's end); names those skipped")
    parser.add_argument("--json", default="docs/gpu-profile.json")
    parser.add_argument("--only", help="these sections, comma-separated (tests, profiles, settings, floor, "
                        "captured, sdxl_profiles; the last three need profiles), e.g. "
                        "profiles,floor,captured for the floor alone")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; run it on a GPU machine (docs/guides/gpus.md: "
              "A GPU box from zero)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    name = torch.cuda.get_device_name()
    report = {"device_name": name, "device": name, "torch": torch.__version__, "skipped": []}

    def save() -> None:  # after every section: a run cut short keeps what it measured
        report["wall_s"] = round(time.perf_counter() - start, 1)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))

    sd15 = {}  # the SD1.5 model, loaded once for its profiles and batches

    def sd15_profiles() -> dict:
        if not (Path(args.model) / "model_index.json").exists():
            save_tiny_model(args.model, arch="sd15", full_size=True)
            print(f"built the SD1.5-architecture model in {args.model} ({time.perf_counter() - start:.0f} s)")
        sd15["model"] = model = load_model(args.model, device="cuda")
        profiles = {}
        for name, sets in VARIANTS.items():
            profiles[name] = profile(model, build_config(overrides=[f"size={args.size}", *sets]), args.repeat)
            print(f"\n{name}:\n{table(profiles[name])}", flush=True)
        return profiles

    def sd15_captured() -> dict:  # the last use of the SD1.5 model: its graphs and pools go with it
        try:
            return captured_profile(sd15.pop("model"), args.size)
        finally:
            torch._dynamo.reset()
            torch.cuda.empty_cache()

    # what earlier checks measured first; then the floor and the captured edit, whose compiles
    # take minutes; SDXL last
    sections = {"tests": gpu_tests, "profiles": sd15_profiles,
                "settings": lambda: batch_settings(sd15["model"], args.size, report["profiles"]),
                "floor": lambda: floor_section(sd15["model"], args.size, report["profiles"]),
                "captured": sd15_captured}
    if not args.no_sdxl:
        sections["sdxl_profiles"] = sdxl_profiles
    if args.only:
        unknown = set(args.only.split(",")) - set(sections)
        if unknown:
            print(f"gpu-check: --only: no section {', '.join(sorted(unknown))}; the sections are "
                  f"{', '.join(sections)}", file=sys.stderr)
            return 2
        sections = {name: run for name, run in sections.items() if name in args.only.split(",")}
    for name, run in sections.items():
        if args.budget_s is not None and time.perf_counter() - start > args.budget_s or (
                name in ("settings", "floor", "captured") and not _measured(report, "profiles")):
            report["skipped"].append(name)
            continue
        try:
            report[name] = run()
        except Exception as error:  # noqa: BLE001 - a broken section must not cost the ones after it
            report[name] = {"error": f"{type(error).__name__}: {error}"}
            print(f"gpu-check: {name} failed: {report[name]['error']}", file=sys.stderr, flush=True)
        save()
    print(f"\ngpu-check on {report['device_name']}: {summary(report)}; "
          f"wrote {args.json} in {report['wall_s']:.0f} s")
    return 0 if report.get("tests", {}).get("returncode") == 0 else 1


def _failed(report: dict, name: str) -> bool:
    return isinstance(report.get(name), dict) and "error" in report[name]


def _measured(report: dict, name: str) -> bool:
    return name in report and not _failed(report, name)


def summary(report: dict) -> str:
    """One line: the tests' outcome, the SD1.5 edit's seconds and peak, what was skipped."""
    tests = f"pytest -m gpu: {report['tests']['summary']}" if _measured(report, "tests") else "tests not run"
    parts = [tests]
    if _measured(report, "profiles"):
        profiles = report["profiles"]
        seconds = {name: p["total"]["median_s"] for name, p in profiles.items()}
        peak_mb = max(p["peak_memory"]["mb"] for p in profiles.values())
        parts.append(f"full edit {seconds['lora_on']:.2f} s, drag only {seconds['lora_off']:.2f} s, "
                     f"peak {peak_mb:.0f} MB")
    if failed := [name for name in report if _failed(report, name)]:
        parts.append(f"failed: {', '.join(failed)}")
    if report["skipped"]:
        parts.append(f"skipped (out of time): {', '.join(report['skipped'])}")
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
