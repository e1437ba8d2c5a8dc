"""`dragnext demo`: the batch flow over the shipped benchmark scenes, each edit scored
against its exact expected result, and the previews stacked."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from PIL import Image

from bench import ground_truth
from dragnext import cli as library_cli
from dragnext.config import parse_overrides
from dragnext.model import ModelSource
from fixture import FIXTURE_MODEL
from flows.bulk_edit import bulk_edit
from flows.cli import add_worker_arguments, preflight, run_flow
from flows.results import read_results
from manifests.examples import DEMO_MANIFEST
from manifests.storage import read_bytes


def preview_sheet(results_uri: str) -> Image.Image:
    """Every succeeded item's preview strip, stacked."""
    strips = [Image.open(io.BytesIO(read_bytes(row["preview_uri"]))).convert("RGB")
              for row in read_results(results_uri) if row["status"] == "succeeded"]
    if not strips:
        raise FileNotFoundError(f"no previews in {results_uri}: no item succeeded")
    sheet = Image.new("RGB", (max(s.width for s in strips), sum(s.height + 2 for s in strips)), "white")
    for i, strip in enumerate(strips):
        sheet.paste(strip, (0, sum(s.height + 2 for s in strips[:i])))
    return sheet


def cmd_demo(args: argparse.Namespace) -> int:
    if not Path(args.model).exists() and args.model == str(FIXTURE_MODEL):
        print(f"dragnext: error: the fixture model is missing from {FIXTURE_MODEL} (it is committed; "
              "fixture/README.md rebuilds it); or run with --model DIR", file=sys.stderr)
        return 2
    preflight(str(DEMO_MANIFEST), args.out, ModelSource(model=args.model), parse_overrides(args.set), [])
    code = run_flow(lambda: bulk_edit(
        str(DEMO_MANIFEST), args.out, model=args.model, overrides=parse_overrides(args.set),
        workers=args.workers), args)
    results = str(Path(args.out) / "results.parquet")
    scored = ground_truth.score_results(str(DEMO_MANIFEST), read_results(results))
    print("\n".join(ground_truth.lines(scored)))
    succeeded, strictly = (sum(s[key] == 1 for s in scored) for key in ("success", "success_strict"))
    print(f"{succeeded} of {len(scored)} edits succeed against the ground truth, {strictly} strictly")
    sheet = Path(args.out) / "previews.png"
    preview_sheet(results).save(sheet)
    print(f"previews (input | instruction | edited): {sheet}")
    return code


def add_commands(commands) -> None:
    demo = commands.add_parser("demo", help="run the batch flow on the shipped benchmark scenes")
    demo.add_argument("--model", default=str(FIXTURE_MODEL), help="default: the fixture model")
    demo.add_argument("--out", default="out/demo", help="the run's output folder")
    library_cli.add_set_argument(demo)
    add_worker_arguments(demo, retries=False)
    demo.set_defaults(run=cmd_demo)
