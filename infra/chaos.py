"""The whole failure story at once, through the `dragnext` command (`make chaos`):

a 200-row manifest on S3 (moto behind a switchable proxy) with its malformed rows, run over
2 worker processes on the tiny model while 5 short store outages hit, one worker process
is killed mid-item, a second run is started into the same output (it must refuse) and the
store goes down for 10 s; then one `dragnext retry`. Then one manifest row is edited and one
item's output deleted, and the same command runs again (those two, and only those, must be
edited again). Last, a run into a local disk that fills mid-run (a capped tmpfs; root only)
must stop with "disk full" and lose nothing, and complete once the disk has room.

Prints a table (and writes JSON): rows, distinct ids, outcomes after each phase, rows lost,
duplicated and stale, wall times and orchestration overhead per item.

    python -m infra.chaos [--good 180] [--json docs/chaos-results.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from command.main import main
from flows.results import read_results
from flows.shard import progress_log
from infra.faults import (
    FaultUnavailable,
    capped_disk,
    careless_manifest,
    item_workers,
    malformed_files,
    malformed_rows,
    resize_disk,
    store_behind_proxy,
)
from manifests.examples import DEMO_MANIFEST
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

    def __init__(self, proxy, total: int, command: list[str]):
        super().__init__()
        self.proxy, self.log, self.command = proxy, [], command
        step = max(1, total // 10)
        self.plan = {step * k: ("outage", 1.5) for k in range(1, 6)}
        self.plan[step * 6] = ("kill-worker", None)
        self.plan[step * 6 + step // 2] = ("second-run", None)
        self.plan[step * 7] = ("outage", 10.0)
        self.second_run: threading.Thread | None = None
        self.second_outcome: dict = {}

    def emit(self, record: logging.LogRecord) -> None:
        action = self.plan.pop(record.done, None)
        if action is None:
            return
        kind, seconds = action
        if kind == "outage":
            self.proxy.outage(seconds)
            self.log.append(f"store down {seconds:.1f} s after item {record.done}")
        elif kind == "second-run":
            self.second_run = threading.Thread(target=self._second_run, daemon=True)
            self.second_run.start()
            self.log.append(f"a second run into the same output started after item {record.done}")
        else:
            workers = item_workers()
            workers[0].send_signal(signal.SIGKILL)
            self.log.append(f"worker {workers[0].pid} killed after item {record.done}")


    def _second_run(self) -> None:
        """The same command again, from another process, while the first one runs."""
        done = subprocess.run([sys.executable, "-m", "command", "-q", *self.command], capture_output=True,
                              text=True, timeout=600)
        refusal = [line for line in done.stderr.splitlines() if line.startswith("dragnext: error:")]
        self.second_outcome = {"exit_code": done.returncode, "message": refusal[-1] if refusal else ""}


def tally(manifest_ids: list, results: list[dict]) -> dict:
    expected = Counter(i if i is not None else f"<row {n}>" for n, i in enumerate(manifest_ids))
    found = Counter(r["item_id"] for r in results)
    return {"rows": len(results), "distinct_ids": len(found), **Counter(r["status"] for r in results),
            "lost": sum((expected - found).values()), "duplicated": sum((found - expected).values())}


def stale(results: list[dict], manifest_rows: list[dict], read) -> int:
    """Succeeded rows whose result is not of their manifest row (its record's drags differ)
    or whose outputs are gone."""
    by_id = {r["item_id"]: r for r in manifest_rows if r.get("item_id")}
    count = 0
    for row in results:
        if row["status"] != "succeeded":
            continue
        try:
            record = json.loads(read(row["record_uri"]))
            read(row["image_uri"])
        except FileNotFoundError:
            count += 1
            continue
        wanted = [[d["target"]["x"], d["target"]["y"]] for d in by_id[row["item_id"]]["drags"]]
        count += [d["target"] for d in record["item"]["drags"]] != wanted
    return count


def edit_between_runs(direct, rows: list[dict]) -> tuple[list[dict], list[str]]:
    """One manifest row's target moved and another item's edited image deleted."""
    changed, deleted = rows[0]["item_id"], rows[1]["item_id"]
    rows = [dict(r) for r in rows]
    drag = dict(rows[0]["drags"][0])
    drag["target"] = {"x": drag["target"]["x"] + 2.0, "y": drag["target"]["y"]}
    rows[0]["drags"] = [drag, *rows[0]["drags"][1:]]
    direct.pipe(f"{BUCKET}/job/manifest.parquet", careless_manifest(rows))
    direct.rm(f"{BUCKET}/out/items/{deleted}/edited.png")
    return rows, [changed, deleted]


def full_disk_phase(model: str, workers: int, sets: list[str]) -> dict:
    """A local run into a disk that fills mid-run, then again once the disk has room."""
    scratch = Path(tempfile.mkdtemp(prefix="dragnext-chaos-disk-"))
    job = scratch / "job"
    shutil.copytree(DEMO_MANIFEST.parent, job)
    scenes = read_table(str(DEMO_MANIFEST)).to_pylist()
    rows = [{**scenes[i % len(scenes)], "item_id": f"disk-{i:03d}"} for i in range(24)]
    (job / "manifest.parquet").write_bytes(careless_manifest(rows))
    disk, out = scratch / "disk", scratch / "disk" / "out"
    os.environ["DRAGNEXT_FALLBACK_DIR"] = str(scratch / "fallback")
    try:
        with capped_disk(disk, "3m"):
            command = ["-q", "run", str(job / "manifest.parquet"), "--output", str(out), "--model", model,
                       "--workers", str(workers), *sets]
            full_code = main(command)
            stored = [json.loads(p.read_text()) for p in (out / "rows").glob("*.json")]  # torn: raises
            resize_disk(disk, "64m")
            second_code = main(command)
            results = read_results(str(out / "results.parquet"))
            return {"first_exit_code": full_code, "rows_stored_when_full": len(stored),
                    "succeeded_when_full": sum(r["status"] == "succeeded" for r in stored),
                    "second_exit_code": second_code,
                    "after_room": tally([r["item_id"] for r in rows], results),
                    "stale": stale(results, rows, lambda uri: Path(uri).read_bytes())}
    except FaultUnavailable as error:
        return {"skipped": str(error)}


def chaos(good: int, workers: int) -> dict:
    from dragnext.tiny_model import save_tiny_model

    scratch = Path(tempfile.mkdtemp(prefix="dragnext-chaos-"))
    model = str(save_tiny_model(scratch / "tiny"))
    rows = manifest_rows(good)
    sets = [a for s in FAST for a in ("--set", s)]
    with store_behind_proxy(BUCKET) as (proxy, direct):
        manifest = upload(direct, rows)
        results_uri = f"s3://{BUCKET}/out/results.parquet"
        command = ["run", manifest, "--output", f"s3://{BUCKET}/out", "--model", model,
                   "--workers", str(workers), *sets]
        faults = Faults(proxy, good, command)
        progress_log.addHandler(faults)
        started = time.perf_counter()
        try:
            main(command)
        finally:
            progress_log.removeHandler(faults)
        wall = time.perf_counter() - started
        if faults.second_run is not None:
            faults.second_run.join()
        first = read_results(results_uri)
        started = time.perf_counter()
        main(["-q", "retry", results_uri, "--workers", str(workers)])
        retry_wall = time.perf_counter() - started
        after = read_results(results_uri)

        rows, touched = edit_between_runs(direct, rows)
        started = time.perf_counter()
        main(["-q", *command])
        rerun_wall = time.perf_counter() - started
        rerun = read_results(results_uri)
        summary = json.loads(direct.cat(f"{BUCKET}/out/summary.json"))
        rerun_stale = stale(rerun, rows, lambda uri: direct.cat(uri.removeprefix("s3://")))
    ids = [r["item_id"] for r in rows]
    edited = [r for r in first if r["status"] == "succeeded"]
    item_s = sum(sum(r["timings_s"].values()) for r in edited) / max(1, len(edited))
    return {
        "manifest_rows": len(rows), "malformed": len(rows) - good, "workers": workers, "faults": faults.log,
        "store_outages": proxy.outages, "second_run": faults.second_outcome,
        "before_retry": tally(ids, first), "after_retry": tally(ids, after),
        "after_edit_and_rerun": {
            **tally(ids, rerun), "stale": rerun_stale, "touched": touched,
            "edited_again": sum(r["status"] == "succeeded" for r in rerun) - summary["resumed"]},
        "full_disk": full_disk_phase(model, workers, sets),
        "wall_s": round(wall, 1), "retry_wall_s": round(retry_wall, 1), "rerun_wall_s": round(rerun_wall, 1),
        "edit_s_per_item": round(item_s, 3),
        "overhead_s_per_item": round(wall * workers / max(1, len(edited)) - item_s, 3),
    }


def table(report: dict) -> str:
    b, a, e = report["before_retry"], report["after_retry"], report["after_edit_and_rerun"]
    d = report["full_disk"].get("after_room", {})
    lines = [f"{'':24}{'run':>10}{'after retry':>14}{'edit+rerun':>12}{'full disk':>11}"]
    for key in ("rows", "distinct_ids", "succeeded", "invalid", "failed", "lost", "duplicated", "stale"):
        lines.append(f"{key:24}{b.get(key, 0):>10}{a.get(key, 0):>14}{e.get(key, 0):>12}"
                     f"{d.get(key, report['full_disk'].get('stale', 0) if key == 'stale' else 0):>11}")
    second, disk = report["second_run"], report["full_disk"]
    lines += [f"{'wall s':24}{report['wall_s']:>10}{report['retry_wall_s']:>14}{report['rerun_wall_s']:>12}",
              f"second run into the same output: exit {second.get('exit_code')}: {second.get('message', '')}",
              f"edit + rerun: {e['edited_again']} item(s) edited again ({', '.join(e['touched'])} touched)",
              "full disk: " + (disk["skipped"] if "skipped" in disk else
                               f"exit {disk['first_exit_code']} with {disk['succeeded_when_full']} item(s) "
                               f"done, then exit {disk['second_exit_code']} once the disk had room"),
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
