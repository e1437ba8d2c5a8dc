"""`dragnext studio`: the Author and Review pages served on the command's roots."""

from __future__ import annotations

import argparse

from dragnext import cli as library_cli
from dragnext.config import parse_overrides
from fixture import FIXTURE_MODEL
from manifests.storage import absolute
from studio.segment import DEFAULT_SAM


def cmd_studio(args: argparse.Namespace) -> int:
    import uvicorn
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    from studio.app import StudioSettings, create_app
    from studio.roots import Roots

    manifest, results = args.manifest and absolute(args.manifest), args.results and absolute(args.results)
    settings = StudioSettings(model=str(args.model), manifest=manifest, results=results,
                              overrides=parse_overrides(args.set), sam=args.sam or None,
                              prefect=bool(PREFECT_API_URL.value()),
                              prefect_ui=(PREFECT_UI_URL.value() or "") if PREFECT_API_URL.value() else "",
                              roots=Roots.of(manifest, results, args.allow_prefix, args.write_prefix),
                              host=args.host, port=args.port, insecure=args.insecure)
    app = create_app(settings)  # checks the model and the keys: a mistake is one line, not a page error
    token = f"?token={app.state.token}" if app.state.token else ""
    print(f"dragnext studio: http://{args.host}:{args.port}/author{token} and /review (model {args.model})",
          flush=True)
    print(f"  reads under: {', '.join(settings.roots.read) or 'nothing but uploads'}; writes manifests "
          f"under: {', '.join(settings.roots.write) or 'nowhere (give --write-prefix)'}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port,
                log_level="warning" if args.quiet else "info")
    return 0


def add_commands(commands) -> None:
    studio = commands.add_parser("studio", help="author drags and review results in the browser")
    studio.add_argument("--model", default=str(FIXTURE_MODEL), help="the model Edit now runs "
                        "(default: the fixture model)")
    studio.add_argument("--manifest", help="the manifest Author opens rows of and adds rows to")
    studio.add_argument("--results", help="a run's results.parquet for Review to open")
    studio.add_argument("--allow-prefix", action="append", default=[], metavar="URI",
                        help="also read results, manifests, images and masks under this prefix "
                        "(repeatable; default: only the folders of --manifest and --results)")
    studio.add_argument("--write-prefix", action="append", default=[], metavar="URI",
                        help="Add to manifest may write manifests under this prefix (repeatable; "
                        "default: only the --manifest itself)")
    studio.add_argument("--host", default="127.0.0.1", help="bound to anything but loopback, the "
                        "studio asks for the token in the URL it prints")
    studio.add_argument("--port", type=int, default=7860, help="the port the pages are served on")
    studio.add_argument("--insecure", action="store_true", help="no token off loopback: only behind "
                        "a proxy that authenticates")
    studio.add_argument("--sam", default=DEFAULT_SAM, help="a SAM model in the local cache for box "
                        f"segmentation (default {DEFAULT_SAM}; GrabCut without it; '' for GrabCut)")
    library_cli.add_set_argument(studio)
    studio.set_defaults(run=cmd_studio)

