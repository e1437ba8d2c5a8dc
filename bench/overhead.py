"""What the batch layer costs: items per hour of `dragnext run` (1 and 2 worker processes)
against a plain loop of `edit()` over the same items in one process, same config, same
machine, one CPU thread per process. Every variant is timed from outside as a whole
command (start-up, imports and model loads included). Prints a table, writes JSON.

    python -m bench.overhead [--n 10] [--model fixture/model] [--json out/overhead.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import generate
from bench.report import publish
from fixture import FIXTURE_MODEL

ROOT = Path(__file__).resolve().parents[1]


def plain_loop(manifest: str, model_spec: str) -> int:
    """The baseline: every item of `manifest` through `edit()`, in this process."""
    from dragnext.config import build_config
    from dragnext.edit import edit
    from dragnext.model import load_model, model_preset
    from manifests.items import load_item
    from manifests.schema import read_table
    from manifests.storage import parent
    from manifests.uris import UriPolicy

    config = build_config(preset=model_preset(model_spec))
    model = load_model(model_spec)
    policy = UriPolicy(parent(manifest))
    for row in read_table(manifest).to_pylist():
        item = load_item(row, policy)
        edit(item.image, item.instruction, model, config, item_id=item.item_id)
    return 0


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def measure(n: int, model: str, seed: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="dragnext-overhead-"))
    manifest = generate.write(generate.cases(n, seed), str(folder / "job"))
    items = 3 * n
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1",
           "PREFECT_HOME": str(folder / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1"}
    python = sys.executable
    loop = [python, "-m", "bench.overhead", "--loop", manifest, "--model", model]
    walls = {"edit() loop": timed(loop, env)}
    for workers in (1, 2):
        walls[f"dragnext run, {workers} worker(s)"] = timed(
            [python, "-m", "command", "-q", "run", manifest, "--output", str(folder / f"run{workers}"),
             "--model", model, "--workers", str(workers)], env)
    rows = {name: {"wall_s": round(wall, 1), "items_per_hour": round(items / wall * 3600, 1)}
            for name, wall in walls.items()}
    loop, one, two = (rows[k]["items_per_hour"] for k in rows)
    return {"items": items, "model": model, "threads_per_process": 1, "variants": rows,
            "overhead_pct": round((loop / one - 1) * 100, 1), "two_vs_one_workers": round(two / one, 2)}


def table(report: dict) -> str:
    lines = [f"{'variant':32}{'wall s':>10}{'items/h':>10}"]
    lines += [f"{name:32}{v['wall_s']:>10}{v['items_per_hour']:>10}"
              for name, v in report["variants"].items()]
    lines += [f"{report['items']} items; orchestration overhead {report['overhead_pct']}% "
              f"(1 worker vs the loop); 2 workers / 1 worker = {report['two_vs_one_workers']}x"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="cases per drag type")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model", default=str(FIXTURE_MODEL))
    parser.add_argument("--json", default="out/overhead.json")
    parser.add_argument("--loop", metavar="MANIFEST", help=argparse.SUPPRESS)  # the baseline's own process
    args = parser.parse_args()
    if args.loop:
        return plain_loop(args.loop, args.model)
    report = measure(args.n, args.model, args.seed)
    publish(report, args.json, table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
