"""Items per hour of `dragnext run` by batch size, on the CPU: batch 1, 2, 4 and 8, with
1 worker process of 2 threads and with 2 worker processes of 1 thread each, LoRA off (the
fixture's preset) and on; each setting a whole command (start-up, imports and model loads
included) over the same benchmark cases, so the bench's success can be compared too.
Today's default before batching (1 worker, batch 1) is the `batch 1, 1 worker` row.
Prints a table, writes JSON; resumes from the JSON (a setting already measured is kept).

    python -m bench.throughput [--n 4] [--lora-steps 20] [--json docs/throughput.json]

`--compare DIR` measures instead the LoRA-on settings of `--batches` twice in one run, with
the code checked out in DIR (the previous code: `git worktree add DIR REF`) and with this
checkout's, side by side: what a change to the LoRA stage bought.
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

from PIL import Image

from bench import generate
from bench.cases import TYPES
from bench.run import item_of, score
from fixture import FIXTURE_MODEL

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (1, 2, 4, 8)
LAYOUTS = {"1 worker x 2 threads": (1, 2), "2 workers x 1 thread": (2, 1)}


def success_by_type(cases, out: Path) -> dict[str, int]:
    """Successful cases per drag type, scored from the run's edited images."""
    found = dict.fromkeys(TYPES, 0)
    for case in cases:
        edited = out / "items" / case.case_id / "edited.png"
        if edited.exists():
            image = Image.open(edited).convert("RGB")
            found[case.type] += int(score(case, item_of(case), image, 0.0)["success"])
    return found


def run_setting(manifest: str, out: Path, model: str, batch: int, workers: int, threads: int,
                lora: bool, lora_steps: int, env: dict, root: Path = ROOT) -> float:
    sets = [f"runtime.batch_size={batch}"]
    sets += ["lora.enabled=true", f"lora.steps={lora_steps}"] if lora else []
    command = [sys.executable, "-m", "command", "-q", "run", manifest, "--output", str(out),
               "--model", model, "--workers", str(workers), *[a for s in sets for a in ("--set", s)]]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=root, env={**env, "OMP_NUM_THREADS": str(threads)},
                          stdout=subprocess.DEVNULL)
    if done.returncode not in (0, 1):  # 1: some items failed, which the success column shows
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}")
    return time.perf_counter() - started


def _job(args) -> tuple[Path, list, str, dict]:
    folder = Path(tempfile.mkdtemp(prefix="dragnext-throughput-"))
    cases = generate.cases(args.n, args.seed)
    manifest = generate.write(cases, str(folder / "job"))
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1",
           "PREFECT_HOME": str(folder / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1"}
    return folder, cases, manifest, env


def compare(args, report: dict, save) -> dict:
    """LoRA on, the previous code (`args.compare`) and this checkout's, setting by setting."""
    folder, cases, manifest, env = _job(args)
    report.update(items=len(cases), model=args.model, seed=args.seed, lora_steps=args.lora_steps,
                  before=str(args.compare))
    settings = report.setdefault("settings", {})
    for batch in args.batches:
        for layout, (workers, threads) in LAYOUTS.items():
            for code, root in (("before", Path(args.compare).resolve()), ("after", ROOT)):
                name = f"{code}: lora on, batch {batch}, {layout}"
                if name in settings:
                    continue
                out = folder / name.replace(" ", "").replace(",", "-").replace(":", "")
                wall = run_setting(manifest, out, args.model, batch, workers, threads, True, args.lora_steps,
                                   env, root)
                settings[name] = {"code": code, "lora": True, "batch": batch, "workers": workers,
                                  "threads": threads, "wall_s": round(wall, 1),
                                  "items_per_hour": round(len(cases) / wall * 3600, 1),
                                  "success": success_by_type(cases, out)}
                save(report)
                print(f"{name}: {settings[name]['items_per_hour']} items/h", flush=True)
    best = {code: max((s for s in settings.values() if s.get("code") == code),
                      key=lambda s: s["items_per_hour"]) for code in ("before", "after")}
    report["speedup_of_best"] = round(best["after"]["items_per_hour"] / best["before"]["items_per_hour"], 2)
    return report


def measure(args, report: dict, save) -> dict:
    folder, cases, manifest, env = _job(args)
    report.update(items=len(cases), model=args.model, seed=args.seed, lora_steps=args.lora_steps)
    settings = report.setdefault("settings", {})
    for lora in (False, True):
        for batch in BATCHES:
            for layout, (workers, threads) in LAYOUTS.items():
                name = f"lora {'on' if lora else 'off'}, batch {batch}, {layout}"
                if name in settings:
                    continue
                out = folder / name.replace(" ", "").replace(",", "-")
                wall = run_setting(manifest, out, args.model, batch, workers, threads, lora, args.lora_steps,
                                   env)
                settings[name] = {"lora": lora, "batch": batch, "workers": workers, "threads": threads,
                                  "wall_s": round(wall, 1),
                                  "items_per_hour": round(len(cases) / wall * 3600, 1),
                                  "success": success_by_type(cases, out)}
                save(report)
                print(f"{name}: {settings[name]['items_per_hour']} items/h", flush=True)
    for lora in ("off", "on"):
        base = settings[f"lora {lora}, batch 1, 1 worker x 2 threads"]
        mine = {k: v for k, v in settings.items() if k.startswith(f"lora {lora},")}
        best = max(mine, key=lambda k: mine[k]["items_per_hour"])
        report[f"lora_{lora}"] = {
            "baseline": f"lora {lora}, batch 1, 1 worker x 2 threads", "best": best,
            "speedup": round(mine[best]["items_per_hour"] / base["items_per_hour"], 2),
            "success_diff_per_type": {t: mine[best]["success"][t] - base["success"][t] for t in TYPES}}
    return report


def table(report: dict) -> str:
    lines = [f"{'setting':44}{'wall s':>9}{'items/h':>10}  success per type ({', '.join(TYPES)})"]
    for name, s in report["settings"].items():
        lines.append(f"{name:44}{s['wall_s']:>9}{s['items_per_hour']:>10}  {list(s['success'].values())}")
    if "speedup_of_best" in report:
        lines.append(f"best setting after / best before: {report['speedup_of_best']}x")
    for lora in ("off", "on"):
        summary = report.get(f"lora_{lora}")
        if summary:
            lines.append(f"LoRA {lora}: best '{summary['best']}' = {summary['speedup']}x the baseline; "
                         f"success change per type {summary['success_diff_per_type']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4, help="cases per drag type")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lora-steps", type=int, default=20, help="finetune steps when LoRA is on")
    parser.add_argument("--model", default=str(FIXTURE_MODEL))
    parser.add_argument("--json", default="out/throughput.json")
    parser.add_argument("--compare", metavar="DIR", help="a checkout of the previous code: LoRA on, "
                        "before and after side by side")
    parser.add_argument("--batches", type=lambda t: [int(b) for b in t.split(",")], default=list(BATCHES),
                        help="batch sizes measured with --compare (default: 1,2,4,8)")
    args = parser.parse_args()
    path = Path(args.json)
    report = json.loads(path.read_text()) if path.exists() else {}
    measured = (report.get("items"), report.get("seed"), report.get("lora_steps"), report.get("before"))
    if report and measured != (args.n * len(TYPES), args.seed, args.lora_steps, args.compare and
                               str(args.compare)):
        report = {}  # another measurement: start over

    def save(r: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(r, indent=2))

    report = (compare if args.compare else measure)(args, report, save)
    save(report)
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
