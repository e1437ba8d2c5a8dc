"""How long the studio's instant preview takes (`studio.author.instant_preview` after
`studio.state.instruction_of`, the work of one `/api/author/check`), by image size and
number of drags, against the issue's bound of well under a second: `make preview-timing`."""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from PIL import Image

from bench.report import publish
from studio.author import instant_preview
from studio.state import AuthorState, DragState, Region, instruction_of

BOUND_S = 1.0


def drags(side: int, n: int) -> list[DragState]:
    """Up to three drags on a square a fifth of the image wide: translate, rotate, scale."""
    a, b = side * 0.2, side * 0.4
    region = Region(polygons=[[[a, a], [b, a], [b, b], [a, b]]])
    c = (side * 0.3, side * 0.3)
    made = [DragState(type="translate", region=region, handle=c, target=(side * 0.55, side * 0.35)),
            DragState(type="rotate", region=region, handle=(b, c[1]), target=(c[0], b), center=c),
            DragState(type="scale", region=region, handle=(b, b), target=(side * 0.45,) * 2, center=c)]
    return made[:n]


def time_one(side: int, n: int, repeat: int) -> dict:
    image = Image.fromarray((np.random.default_rng(0).random((side, side, 3)) * 255).astype(np.uint8))
    state = AuthorState(image_id="0" * 64, drags=drags(side, n))
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        _, found, shown = instruction_of(state, image)
        instant_preview(shown)
        seconds.append(time.perf_counter() - started)
    assert not [f for f in found if f.level == "error"], found
    return {"side": side, "drags": n, "median_s": round(statistics.median(seconds), 4),
            "max_s": round(max(seconds), 4), "repeat": repeat}


def table(report: dict) -> str:
    lines = ["| image | drags | median | max | under the bound |", "|---|---|---|---|---|"]
    lines += [f"| {r['side']}² | {r['drags']} | {1000 * r['median_s']:.0f} ms | {1000 * r['max_s']:.0f} ms | "
              f"{'yes' if r['max_s'] < BOUND_S else 'NO'} |" for r in report["rows"]]
    return "\n".join(lines)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", default="docs/instant-preview.json")
    args = parser.parse_args()
    rows = [time_one(side, n, args.repeat) for side in (256, 512, 1024) for n in (1, 3)]
    publish({"bound_s": BOUND_S, "rows": rows}, args.json, table({"rows": rows}))


if __name__ == "__main__":
    cli()
