"""The control plane at scale, on moto S3: seconds, peak memory and bytes read from the
store to validate and plan manifests of 1 000, 10 000 and 100 000 rows (rows reference
1 000 distinct 512² PNGs and their masks), and to merge 100 000 results rows. Each
measurement runs in a fresh process (`dragnext plan`'s own code path), so its peak memory
is its own. Prints a table, writes JSON.

    python -m bench.manifest_scale [--sizes 1000 10000 100000] [--json docs/manifest-scale.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from bench.report import publish
from fixture import FIXTURE_MODEL

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "dragnext-scale"
IMAGES = 1000
SIDE = 512


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return out.getvalue()


def upload_images(fs, bucket: str = BUCKET, count: int = IMAGES, noisy: bool = False) -> None:
    """`count` scenes (a coloured box on a flat background, or on noise: a photo's size,
    ~770 kB) and each one's handle mask."""
    rng = np.random.default_rng(0)
    for k in range(count):
        image = (rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8) if noisy
                 else np.full((SIDE, SIDE, 3), rng.integers(0, 255, 3), dtype=np.uint8))
        x, y = rng.integers(64, SIDE - 160, 2)
        image[y:y + 96, x:x + 96] = rng.integers(0, 255, 3)
        mask = np.zeros((SIDE, SIDE), dtype=np.uint8)
        mask[y:y + 96, x:x + 96] = 255
        fs.pipe(f"{bucket}/images/{k:04d}.png", _png(image))
        fs.pipe(f"{bucket}/masks/{k:04d}.png", _png(mask))


def manifest(rows: int, images: int = IMAGES) -> bytes:
    """`rows` rows, row i editing image i mod `images`."""
    from manifests.schema import MANIFEST, table_bytes

    ids = [f"item-{i:06d}" for i in range(rows)]
    k = [i % images for i in range(rows)]
    table = pa.Table.from_pylist([{
        "item_id": ids[i], "image_uri": f"images/{k[i]:04d}.png", "prompt": "a box",
        "editable_mask_uri": None, "params": None,
        "drags": [{"type": "translate", "handle_mask_uri": f"masks/{k[i]:04d}.png",
                   "handle": {"x": 256.0, "y": 256.0}, "target": {"x": 280.0, "y": 260.0},
                   "center": None, "axis": None, "factors": None}]} for i in range(rows)],
        schema=MANIFEST)
    return table_bytes(table)


def _peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def child_plan(manifest_uri: str, model: str) -> dict:
    """Validate and plan, as `dragnext plan` does."""
    from dragnext.config import build_config
    from dragnext.model import ModelSource, model_preset, source_architecture
    from tasks.plan import make_plan

    started = time.perf_counter()
    source = ModelSource(model=model)
    plan = make_plan(manifest_uri, f"s3://{BUCKET}/out", source, source.fingerprint(),
                     build_config(preset=model_preset(model)), {}, architecture=source_architecture(source))
    plan.shards(1000)
    return {"seconds": round(time.perf_counter() - started, 2), "peak_mb": _peak_mb(),
            "to_run": len(plan.to_run), "invalid": len(plan.invalid)}


def child_merge(manifest_uri: str, model: str) -> dict:
    """Merge a finished run's rows (one per item, as its shards return them), write
    results.parquet, then read it back as a resume does."""
    from dragnext.config import build_config
    from dragnext.model import ModelSource, model_preset
    from flows.results import counts, previous_rows, results_table, write_final
    from tasks.plan import make_plan

    base = build_config(preset=model_preset(model))
    output = f"s3://{BUCKET}/merged"
    plan = make_plan(manifest_uri, output, ModelSource(model=model), "fixture", base, {})
    started = time.perf_counter()
    unfinished = plan.merge({}, {})
    finished = {i: {**unfinished[index], "status": "succeeded", "error": None,
                    "image_uri": f"{output}/items/{i}/edited.png", "metrics": {"psnr_outside": 30.0},
                    "timings_s": {"pbsi": 1.0}, "attempts": 1} for i, index in plan.to_run.items()}
    results = plan.merge(finished, {})
    table = results_table(results, plan.extra_columns)
    write_final(output, table, {"results_uri": f"{output}/results.parquet", "counts": counts(results)})
    merged_s = time.perf_counter() - started
    resumed = previous_rows(output)
    return {"seconds": round(time.perf_counter() - started, 2), "merge_and_write_s": round(merged_s, 2),
            "rows": len(resumed), "peak_mb": _peak_mb()}


def in_child(kind: str, manifest_uri: str, model: str, proxy) -> dict:
    before = proxy.served
    done = subprocess.run([sys.executable, "-m", "bench.manifest_scale", "--child", kind, manifest_uri,
                           "--model", model], cwd=ROOT, capture_output=True, text=True, check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return {**report, "store_bytes_read": proxy.served - before}


def measure(sizes: list[int], model: str) -> dict:
    from infra.faults import store_behind_proxy

    report: dict = {"images": IMAGES, "image_side": SIDE, "model": model, "cpu_cores": os.cpu_count(),
                    "plan": {}, "merge": {}}
    with store_behind_proxy(BUCKET) as (proxy, direct):
        upload_images(direct)
        report["image_bytes_total"] = sum(direct.du(f"{BUCKET}/{d}") for d in ("images", "masks"))
        for rows in sizes:
            uri = f"s3://{BUCKET}/m{rows}.parquet"
            direct.pipe(uri.removeprefix("s3://"), manifest(rows))
            report["plan"][rows] = in_child("plan", uri, model, proxy)
            print(f"plan {rows}: {report['plan'][rows]}", flush=True)
        largest = f"s3://{BUCKET}/m{max(sizes)}.parquet"
        report["merge"][max(sizes)] = in_child("merge", largest, model, proxy)
    derive(report)
    return report


def derive(report: dict) -> None:
    """Seconds per 1 000 rows, overall and between consecutive sizes: the first size pays
    for looking at every distinct file once, each row after it for its own checks."""
    plan = {int(n): r for n, r in report["plan"].items()}
    sizes = sorted(plan)
    report["seconds_per_1000_rows"] = {n: round(1000 * plan[n]["seconds"] / n, 3) for n in sizes}
    report["marginal_seconds_per_1000_rows"] = {
        f"{a}-{b}": round(1000 * (plan[b]["seconds"] - plan[a]["seconds"]) / (b - a), 3)
        for a, b in zip(sizes, sizes[1:], strict=False)}


def table(report: dict) -> str:
    lines = [f"{'rows':>8}{'validate+plan s':>17}{'peak MB':>9}{'store MB read':>15}{'s / 1000 rows':>15}"]
    for rows, r in report["plan"].items():
        lines.append(f"{rows:>8}{r['seconds']:>17}{r['peak_mb']:>9}{r['store_bytes_read'] / 2**20:>15.1f}"
                     f"{report['seconds_per_1000_rows'][int(rows)]:>15}")
    for rows, r in report["merge"].items():
        lines.append(f"merge + write + read back {rows} results rows: {r['seconds']} s "
                     f"(merge and write {r['merge_and_write_s']} s), peak {r['peak_mb']} MB")
    lines.append(f"the image and mask files total {report['image_bytes_total'] / 2**20:.1f} MB; seconds per "
                 f"1000 more rows: {report['marginal_seconds_per_1000_rows']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--model", default=str(FIXTURE_MODEL))
    parser.add_argument("--json", default="out/manifest-scale.json")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "MANIFEST"), help=argparse.SUPPRESS)
    parser.add_argument("--table", action="store_true", help="print the table of an earlier --json")
    args = parser.parse_args()
    if args.child:
        kind, uri = args.child
        print(json.dumps((child_plan if kind == "plan" else child_merge)(uri, args.model)))
        return 0
    if args.table:
        report = json.loads(Path(args.json).read_text())
        derive(report)
        publish(report, args.json, table(report))
        return 0
    report = measure(args.sizes, args.model)
    publish(report, args.json, table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
