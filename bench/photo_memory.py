"""Peak memory and time of one `dragnext edit` of a big photo, by size, with and without the
crop (`dragnext.crop`): `make photo-memory`. Each edit is its own process (the command as a
user runs it, on the CPU), its peak resident memory read from the kernel; the picture is a
JPEG with a small object translated, on the tiny model at working size 64.

    python -m bench.photo_memory [--sides 1024,2048,4096] [--json docs/photo-memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.report import publish
from dragnext.tiny_model import save_tiny_model

FAST = ["size=64", "lora.steps=2", "inversion.num_steps=10", "inversion.strength=0.6", "pbsi.steps=2",
        "pbsi.iterations=3"]


def write_photo(folder: Path, side: int) -> tuple[Path, Path]:
    """A textured JPEG `side` px square with a disc a fiftieth of it across, moved by its radius."""
    rng = np.random.default_rng(side)
    coarse = rng.integers(60, 200, (side // 64 + 1, side // 64 + 1, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(coarse).resize((side, side), Image.Resampling.BILINEAR)).copy()
    ys, xs = np.ogrid[:side, :side]
    r, c = side / 100, side / 2
    disc = (xs - c) ** 2 + (ys - c) ** 2 <= r**2
    pixels[disc] = (220, 40, 40)
    Image.fromarray(pixels).save(folder / "photo.jpg", quality=90)
    Image.fromarray(disc.astype(np.uint8) * 255).save(folder / "handle.png")
    spec = {"prompt": "a red disc", "drags": [{"type": "translate", "handle_mask": "handle.png",
                                               "handle": [c, c], "target": [c + 2 * r, c]}]}
    (folder / "drag.json").write_text(json.dumps(spec))
    return folder / "photo.jpg", folder / "drag.json"


def measure(model: Path, image: Path, instruction: Path, crop: bool) -> dict:
    """One edit in a child process: its seconds and its own peak RSS (`wait4`'s usage)."""
    out = image.with_name(f"edited-{crop}.png")
    sets = [a for s in [*FAST, f"crop.enabled={str(crop).lower()}"] for a in ("--set", s)]
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "command.main", "-q", "edit", "--model", str(model),
                              "--image", str(image), "--instruction", str(instruction), "--out", str(out),
                              "--device", "cpu", *sets])
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    if child.returncode != 0:
        raise SystemExit(f"dragnext edit exited {child.returncode} on {image}")
    seconds = time.perf_counter() - started
    record = json.loads(out.with_suffix(".json").read_text())
    return {"crop": crop, "seconds": round(seconds, 1), "box": record.get("crop"),
            "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", default="1024,2048,4096")
    parser.add_argument("--json", default="docs/photo-memory.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = save_tiny_model(Path(tmp) / "tiny")
        for side in sorted(int(s) for s in args.sides.split(",")):
            folder = Path(tmp) / str(side)
            folder.mkdir()
            image, instruction = write_photo(folder, side)
            for crop in (True, False):
                rows.append({"side": side, **measure(model, image, instruction, crop)})
    lines = [f"{'side':>6s} {'crop':>5s} {'box':>12s} {'peak RSS MB':>12s} {'s':>6s}"]
    for r in rows:
        box = f"{r['box']['width']}x{r['box']['height']}" if r["box"] else "whole"
        crop = str(r["crop"])
        lines.append(f"{r['side']:6d} {crop:>5s} {box:>12s} {r['peak_rss_mb']:12d} {r['seconds']:6.1f}")
    publish({"rows": rows, "model": "tiny sd15 (dragnext.tiny_model)", "config": FAST}, args.json,
            "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
