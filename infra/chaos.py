"""The whole failure story at once, through the `dragnext` command (`make chaos`):

a 200-row manifest on S3 (moto behind a switchable proxy) with 20 malformed rows, run over
2 worker processes on the tiny model while 5 short store outages hit, one worker process
is killed mid-item and the store goes down for 10 s; then one `dragnext retry`. Prints a
table (and writes JSON): rows, distinct ids, outcomes before and after the retry, rows
lost and duplicated, wall time and orchestration overhead per item.

    python -m infra.chaos [--good 180] [--json docs/chaos-results.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path

from flows.cli import DEMO_MANIFEST, main
from flows.results import read_results
from flows.shard import progress_log
from infra.faults import careless_manifest, item_workers, malformed_files, malformed_rows, store_behind_proxy
from manifests.schema import read_table

FAST = ["size=64", "lora.steps=2", "inversion.num_steps=10", "inversion.strength=0.6", "pbsi.steps=2",
        "pbsi.iterations=3"]
BUCKET = "chaos"


def manifest_rows(good: int) -> list[dict]:
    """`good` rows cycling over the demo scenes, then 20 malformed ones: every kind in
    `MALFORMED`, an id used twice and an image that does not exist."""
    scenes = read_table(str(DEMO_MANIFEST)).to_pylist()
    rows = [{**scenes[i % len(scenes)], "item_id": f"item-{i:04d}"} for i in range(good)]
    extra = [{**scenes[0], "item_id": "twice"}, {**scenes[1], "item_id": "twice"},
             {**scenes[0], "item_id": "no-image", "image_uri": "images/nowhere.png"}]
    return rows + malformed_rows(scenes[0]) + extra


def upload(direct, rows: list[dict]) -> str:
    folder = DEMO_MANIFEST.parent
    for path in [*(folder / "images").iterdir(), *(folder / "masks").iterdir()]:
        direct.pipe(f"{BUCKET}/job/{path.parent.name}/{path.name}", path.read_bytes())
    for name, data in malformed_files().items():
        direct.pipe(f"{BUCKET}/job/{name}", data)
    direct.pipe(f"{BUCKET}/job/manifest.parquet", careless_manifest(rows))
    return f"s3://{BUCKET}/job/manifest.parquet"


class Faults(logging.Handler):
    """Injects the faults as items finish (in the run's own thread, so they are repeatable)."""

    def __init__(self, proxy, total: int):
        super().__init__()
        self.proxy, self.log = proxy, []
        step = max(1, total // 10)
        self.plan = {step * k: ("outage", 1.5) for k in range(1, 6)}
        self.plan[step * 6] = ("kill-worker", None)
        self.plan[step * 7] = ("outage", 10.0)

    def emit(self, record: logging.LogRecord) -> None:
        action = self.plan.pop(record.done, None)
        if action is None:
            return
        kind, seconds = action
        if kind == "outage":
            self.proxy.outage(seconds)
            self.log.append(f"store down {seconds:.1f} s after item {record.done}")
        else:
            workers = item_workers()
            workers[0].send_signal(signal.SIGKILL)
            self.log.append(f"worker {workers[0].pid} killed after item {record.done}")


def tally(manifest_ids: list, results: list[dict]) -> dict:
    expected = Counter(i if i is not None else f"<row {n}>" for n, i in enumerate(manifest_ids))
    found = Counter(r["item_id"] for r in results)
    return {"rows": len(results), "distinct_ids": len(found), **Counter(r["status"] for r in results),
            "lost": sum((expected - found).values()), "duplicated": sum((found - expected).values())}


def chaos(good: int, workers: int) -> dict:
    from dragnext.tiny_model import save_tiny_model

    scratch = Path(tempfile.mkdtemp(prefix="dragnext-chaos-"))
    model = str(save_tiny_model(scratch / "tiny"))
    rows = manifest_rows(good)
    sets = [a for s in FAST for a in ("--set", s)]
    with store_behind_proxy(BUCKET) as (proxy, direct):
        manifest = upload(direct, rows)
        results_uri = f"s3://{BUCKET}/out/results.parquet"
        faults = Faults(proxy, good)
        progress_log.addHandler(faults)
        started = time.perf_counter()
        try:
            main(["run", manifest, "--output", f"s3://{BUCKET}/out", "--model", model,
                  "--workers", str(workers), *sets])
        finally:
            progress_log.removeHandler(faults)
        wall = time.perf_counter() - started
        first = read_results(results_uri)
        started = time.perf_counter()
        main(["-q", "retry", results_uri, "--workers", str(workers)])
        retry_wall = time.perf_counter() - started
        after = read_results(results_uri)
    ids = [r["item_id"] for r in rows]
    edited = [r for r in first if r["status"] == "succeeded"]
    item_s = sum(sum(r["timings_s"].values()) for r in edited) / max(1, len(edited))
    return {
        "manifest_rows": len(rows), "malformed": len(rows) - good, "workers": workers, "faults": faults.log,
        "store_outages": proxy.outages, "before_retry": tally(ids, first), "after_retry": tally(ids, after),
        "wall_s": round(wall, 1), "retry_wall_s": round(retry_wall, 1),
        "edit_s_per_item": round(item_s, 3),
        "overhead_s_per_item": round(wall * workers / max(1, len(edited)) - item_s, 3),
    }


def table(report: dict) -> str:
    b, a = report["before_retry"], report["after_retry"]
    lines = [f"{'':24}{'run':>10}{'after retry':>14}"]
    for key in ("rows", "distinct_ids", "succeeded", "invalid", "failed", "lost", "duplicated"):
        lines.append(f"{key:24}{b.get(key, 0):>10}{a.get(key, 0):>14}")
    lines += [f"{'wall s':24}{report['wall_s']:>10}{report['retry_wall_s']:>14}",
              f"manifest rows {report['manifest_rows']} ({report['malformed']} malformed), "
              f"{report['workers']} workers, {report['store_outages']} store outages",
              f"edit {report['edit_s_per_item']} s/item, orchestration overhead "
              f"{report['overhead_s_per_item']} s/item", *report["faults"]]
    return "\n".join(lines)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--good", type=int, default=180, help="well-formed rows (20 malformed are added)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", default="out/chaos.json")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-home-"))
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's line per request
    report = chaos(args.good, args.workers)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(table(report))


if __name__ == "__main__":
    cli()
