"""`make family-profiles`: one PBSI iteration of each family's full-size random model at its
native size, side by side in one run: seconds per stage, UNet passes and peak memory.

Each family goes through the commands a user runs: `dragnext tiny-model DIR --arch A
--full-size`, then `dragnext profile --model DIR` with the edit cut to its units of cost
(LoRA off, T = 2 inversion steps, one PBSI step of one iteration, one denoising step): a
forward pass, and a forward and backward pass through the UNet with PBSI's loss. A full
edit's time follows from these and `dragnext.cost.unet_passes`. Each family runs in its own
process, so one that runs out of memory is reported as such and the others still run;
models and per-family results are kept in `--work` and reused when the command is rerun.

    python -m bench.family_profiles [--device cpu] [--work build/families] [--json docs/family-profiles.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from dragnext.tiny_model import ARCHS

UNITS = ["lora.enabled=false", "inversion.num_steps=4", "inversion.strength=0.5", "pbsi.steps=1",
         "pbsi.iterations=1"]


def _dragnext(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "command", "-q", *args], capture_output=True, text=True)


def profile_family(arch: str, work: Path, device: str) -> dict:
    model, report = work / arch, work / f"{arch}.json"
    if report.exists():
        return json.loads(report.read_text())
    if not (model / "model_index.json").exists():
        start = time.perf_counter()
        done = _dragnext("tiny-model", str(model), "--arch", arch, "--full-size")
        if done.returncode:
            return {"error": f"tiny-model failed: {done.stderr.strip()[-300:]}"}
        print(f"{arch}: built in {time.perf_counter() - start:.0f} s", flush=True)
    sets = [a for s in UNITS for a in ("--set", s)]
    done = _dragnext("profile", "--model", str(model), "--device", device, "--repeat", "1", "--warmup", "0",
                     "--json", str(report), *sets)
    if done.returncode:
        killed = done.returncode < 0
        return {"error": f"killed (signal {-done.returncode}: out of memory?)" if killed
                else f"exit {done.returncode}: {done.stderr.strip()[-300:]}"}
    return json.loads(report.read_text())


def row(arch: str, report: dict) -> str:
    if "error" in report:
        return f"{arch:8s} {report['error']}"
    stages = {name: stage["median_s"] for name, stage in report["stages"].items()}
    height, width = report["working_size"]
    return (f"{arch:8s} {report['family']:5s} {width:>5d}x{height:<5d} {stages['inversion']:9.1f} "
            f"{stages['pbsi']:9.1f} {stages['denoise']:9.1f} {stages['decode']:9.1f} "
            f"{report['total']['median_s']:8.1f} {report['peak_memory']['mb'] / 1024:8.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", default="build/families", help="models and per-family reports (reused)")
    parser.add_argument("--json", default="docs/family-profiles.json")
    parser.add_argument("--arch", action="append", choices=ARCHS, help="only these (default: all)")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    reports = {arch: profile_family(arch, work, args.device) for arch in args.arch or ARCHS}
    lines = ["family   kind  size         invert s   pbsi s  denoise s  decode s  total s  peak GB", "-" * 86]
    lines += [row(arch, r) for arch, r in reports.items()]
    print("\n".join(lines))
    print("invert: VAE encode + 2 UNet forward passes; pbsi: 3 forward + 1 backward (the reference, one "
          "iteration with its loss, the DDIM step); denoise: 1 forward of 2 samples (mutual attention); "
          "decode: VAE decode")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    report = {"units": UNITS, "device": args.device, "families": reports}
    Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if all("error" not in r for r in reports.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
