"""`dragnext bench`: methods side by side on the ground-truth benchmark."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import generate, jobs, oracle, run
from bench.cases import TYPES
from dragnext import cli as library_cli
from dragnext.config import ConfigError, build_config, read_config_file
from dragnext.model import load_model, model_preset
from fixture import FIXTURE_MODEL


def drag_types(text: str) -> tuple[str, ...]:
    types = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in types if t not in TYPES]
    if unknown or not types:
        named = ", ".join(unknown) or repr(text)
        raise argparse.ArgumentTypeError(f"{named}: not one of {', '.join(TYPES)}")
    return types


def cmd_bench(args: argparse.Namespace) -> int:
    base = build_config(read_config_file(args.config) if args.config else None, args.set,
                        preset=model_preset(args.model)).to_record()
    methods = [run.Method.parse(m) for m in args.methods.split(";" if ";" in args.methods else ",") if m]
    if not any(m.is_oracle for m in methods):  # every figure is read against its ceiling
        methods.append(run.Method.parse(oracle.NAME))
    for method in methods:  # every method's config is checked before any of them runs
        try:
            build_config(base, method.overrides)
        except ConfigError as error:
            raise ConfigError(f"method {method.label!r}: {error} (a method with several overrides "
                              "needs ';' between methods, e.g. 'dragnext:a=1,b=2;')") from None
    cases = generate.cases(args.n, args.seed, args.types, args.scale)
    out = Path(args.out)
    generate.write(cases, str(out))  # the same cases as a manifest, for `dragnext run`
    if args.jobs > 1:
        results, images = jobs.run_jobs(args.model, args.device, cases, methods, base, args.jobs, args.quiet)
    else:
        results, images = run.run(load_model(args.model, device=args.device), cases, methods, base,
                                  quiet=args.quiet)
    print(run.table(results))
    run.write_json(results, args.json or str(out / "results.json"))
    run.grid(cases, images).save(out / "grid.png")
    return 0


def add_commands(commands) -> None:
    bench = commands.add_parser("bench", help="compare methods on the ground-truth drag benchmark")
    bench.add_argument("--model", default=str(FIXTURE_MODEL), help="model (default: the fixture model)")
    bench.add_argument("--methods", default="dragnext,dragdiffusion,warp",
                       help="comma-separated; a method may carry overrides after ':' joined by "
                            "',' (then separate methods with ';'), e.g. "
                            "'dragnext;dragnext:pbsi.progressive=false'. Such variants are in the "
                            "table and JSON; the grid shows the plain methods. 'oracle' (the "
                            "expected image through the model's VAE and output path, the ceiling) "
                            "is always added")
    bench.add_argument("--n", type=int, default=30, help="cases per drag type")
    bench.add_argument("--types", type=drag_types, default=TYPES,
                       help=f"comma-separated drag types (default: all of {','.join(TYPES)})")
    bench.add_argument("--scale", type=int, choices=range(1, 9), default=1, metavar="K",
                       help="each case in a picture K times bigger (1-8), its shapes at their own size: a "
                            "small object in a big photo, what `crop` is for (compare 'dragnext;"
                            "dragnext:crop.enabled=false')")
    bench.add_argument("--seed", type=int, default=0, help="the first case's seed: cases are seeds seed … "
                       "seed+n−1 of each type (tune on other seeds than those reported)")
    bench.add_argument("--jobs", type=int, default=1, help="processes, one CPU thread each (default 1: "
                       "this process, all threads); the JSON is the same but for seconds")
    bench.add_argument("--json", help="results JSON (default: OUT/results.json)")
    bench.add_argument("--out", default="out/bench", help="folder for the cases' manifest and the grid")
    library_cli.add_config_arguments(bench)
    bench.add_argument("--device", help="cuda, cuda:1, cpu (default: CUDA when present)")
    bench.set_defaults(run=cmd_bench)
