"""The batch commands of `dragnext`: run, retry, plan and manifest (composed by `command.main`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from tqdm import tqdm

from dragnext import cli as library_cli
from dragnext.config import build_config, parse_overrides, read_config_file
from dragnext.model import ModelSource, checked_config, model_preset, source_architecture
from flows import watchdog
from flows.bulk_edit import (
    LEASE_STALE_AFTER_S,
    OutputPathError,
    bulk_edit,
    checked_selection,
    format_output,
    retry_failed,
    run_source,
)
from flows.lease import OutputInUse, check_free
from flows.local_api import local_api
from flows.results import MAX_LISTED, previous_rows, read_profile, read_summary
from flows.selection import SelectionError
from flows.shard import ItemsFailed, progress_log
from manifests.dragbench import BadSampleError, UnsafePickleError, import_dragbench
from manifests.items import read_manifest, validate_rows
from manifests.schema import ManifestError
from manifests.storage import (
    OutputUnwritable,
    StoreUnavailable,
    absolute,
    check_writable,
    is_remote,
    parent,
    write_bytes,
)
from manifests.uris import PolicyError, UriPolicy, check_prefix
from tasks.guard import RunGuard
from tasks.plan import make_plan, summary_counts
from tasks.pool import AUTO_WORKERS, worker_log


class ProgressBar(logging.Handler):
    """The items bar, fed by the shard's progress records (data, not a callback: nothing of
    the CLI travels to a worker)."""

    def __init__(self, quiet: bool):
        super().__init__()
        self.bar = tqdm(desc="items", unit="item", disable=quiet)

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "done"):
            self.bar.total = record.total
            self.bar.set_postfix_str(f"{record.row['item_id']}: {record.row['status']}", refresh=False)
            self.bar.update(record.done - self.bar.n)


class ReportedByTheCommand(logging.Filter):
    """Prefect logs a flow's exception with its traceback; the ends the command expects
    (failed items, a full output, a store that stays down, a leased output) it reports in
    one line of its own."""

    ENDS = (ItemsFailed, StoreUnavailable, OutputUnwritable, OutputInUse, ManifestError)

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], self.ENDS))


INTERRUPTED = ("dragnext: interrupted; the finished items are kept: run the same command again "
               "to resume")
# An interrupted run stores what finished and ends its workers within a few seconds; past this
# deadline (a Prefect call stuck on a server that is gone) the process ends regardless. What is
# left is ended by the watchdog, and the output's lease is taken over by the next run here.
STOP_DEADLINE_S = 9.0


def _interrupt_handler():
    """Ctrl-C and SIGTERM: a KeyboardInterrupt, so the run stops in order, and a deadline."""
    deadline: list[threading.Timer] = []

    def give_up() -> None:
        print(INTERRUPTED, file=sys.stderr, flush=True)
        os._exit(130)

    def handle(signum, frame) -> None:
        if not deadline:
            deadline.append(threading.Timer(STOP_DEADLINE_S, give_up))
            deadline[0].daemon = True
            deadline[0].start()
        raise KeyboardInterrupt(f"signal {signum}")

    return handle


def run_flow(run, args: argparse.Namespace) -> int:
    """Run a flow with the progress bar, and end with its summary line and exit code: 0 when
    every item succeeded, 1 when some failed or were invalid, 3 when the store was down."""
    quieted = [logging.getLogger(name) for name in ("prefect.flow_runs", "prefect.task_runs")]
    levels = [logger.level for logger in quieted]  # restored after: main() may run in a caller's process
    for logger in quieted:
        logger.setLevel(logging.INFO if args.verbose else logging.WARNING)
    reported = ReportedByTheCommand()
    logging.getLogger("prefect.flow_runs").addFilter(reported)
    watchdog.start(os.getpid())
    handler = _interrupt_handler()
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    bar = ProgressBar(args.quiet)
    progress_log.addHandler(bar)
    progress_log.propagate = False
    worker_log.propagate = bool(args.verbose)  # workers' own lines on the console only with -v
    try:
        with local_api():
            summary = run()
    except ItemsFailed as error:
        summary = error.summary
    except (StoreUnavailable, OutputUnwritable) as error:
        print(f"dragnext: error: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the workers were stopped on the way out
        print(INTERRUPTED, file=sys.stderr)
        return 130
    finally:
        progress_log.removeHandler(bar)
        logging.getLogger("prefect.flow_runs").removeFilter(reported)
        for sig, earlier in previous.items():
            signal.signal(sig, earlier)
        progress_log.propagate = worker_log.propagate = True
        for logger, level in zip(quieted, levels, strict=True):
            logger.setLevel(level)
        bar.bar.close()
    counts = summary["counts"]
    if summary.get("guard_stopped"):
        print(f"dragnext: the run stopped early: {summary['guard_stopped']}", file=sys.stderr)
    line = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    resumed = f" ({summary['resumed']} kept from before)" if summary.get("resumed") else ""
    review = f", {summary['needs_review']} need review" if summary.get("needs_review") else ""
    print(f"{line}{resumed}{review} in {summary['wall_s']:.1f} s -> {summary['results_uri']}")
    if counts.get("failed"):
        print(f"retry the failed items: dragnext retry {summary['results_uri']}")
    return 0 if set(counts) <= {"succeeded", "skipped"} else 1


def preflight(manifest: str, output: str, model: ModelSource, overrides: dict,
              allow_prefixes: list[str]) -> None:
    """Everything about a run's command line that can be checked before Prefect starts, so a
    mistake costs one line and seconds: the prefixes, the config (against the model's
    folder), the model's presence and family, the manifest's readability, and the output (a
    folder, writable, not leased by a live run). Raises the error that names the problem."""
    for prefix in allow_prefixes:
        check_prefix(prefix)
    checked_config(model, overrides)
    problems = read_manifest(manifest).problems
    if problems:
        raise ManifestError(f"manifest {manifest} cannot be read: {'; '.join(problems)}")
    if format_output(output, "DATE", "RUN") != output:
        return  # filled in per run (a nightly folder): checked by the run itself
    output = absolute(output)
    if not is_remote(output) and Path(output).exists() and not Path(output).is_dir():
        raise OutputPathError(f"output '{output}' is an existing file; give a folder")
    check_writable(output)
    check_free(output, None, LEASE_STALE_AFTER_S)


def cmd_run(args: argparse.Namespace) -> int:
    overrides = {**(read_config_file(args.config) if args.config else {}), **parse_overrides(args.set)}
    source = library_cli.model_source(args)
    preflight(args.manifest, args.output, source, overrides, args.allow_prefix)
    return run_flow(lambda: bulk_edit(
        args.manifest, args.output, model=source.model, vae=source.vae or "", lora=source.lora or "",
        lora_scale=source.lora_scale, overrides=overrides,
        item_filter=args.items.split(",") if args.items else [], allow_prefixes=args.allow_prefix,
        workers=args.workers, retries=args.retries, profile=args.profile or "", guard_items=args.guard_items,
        guard_failed_fraction=args.guard_failed_fraction), args)


def cmd_retry(args: argparse.Namespace) -> int:
    summary = read_summary(parent(absolute(args.results)))
    source = run_source(summary)
    preflight(summary["manifest_uri"], summary["output_uri"], source, summary["overrides"],
              summary["allow_prefixes"])
    if args.selection:  # a bad file is one line, before any flow starts
        checked_selection(args.selection, args.results, summary)
    return run_flow(lambda: retry_failed(
        args.results, include_invalid=args.include_invalid, workers=args.workers,
        retries=args.retries, selection_uri=args.selection or ""), args)


def cmd_validate(args: argparse.Namespace) -> int:
    conformed = read_manifest(args.manifest)
    if conformed.problems:
        for problem in conformed.problems:
            print(f"{args.manifest}: {problem}")
        return 1
    config = build_config(overrides=parse_overrides(args.set))
    policy = UriPolicy(parent(args.manifest), tuple(args.allow_prefix))
    found = validate_rows(conformed.table.to_pylist(), config, policy, "rows" if args.no_files else "files",
                          row_problems=conformed.row_problems,
                          architecture=source_architecture(library_cli.model_source(args)) if args.model
                          else None)
    for problem in found:
        print(problem)
    print(f"{conformed.table.num_rows} rows, {len(found)} invalid")
    return 1 if found else 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Validate and plan a run without editing: what would run, what is invalid and why, the
    shards, the UNet passes and (with a profile) the device-hours. Starts no Prefect."""
    overrides = {**(read_config_file(args.config) if args.config else {}), **parse_overrides(args.set)}
    for prefix in args.allow_prefix:
        check_prefix(prefix)
    base = build_config(overrides=overrides, preset=model_preset(args.model))
    output = absolute(args.output) if args.output else None
    source = library_cli.model_source(args)
    plan = make_plan(absolute(args.manifest), output or "", source, source.fingerprint(), base,
                     previous_rows(output) if output else {}, allow_prefixes=args.allow_prefix,
                     architecture=source_architecture(source))
    counted = summary_counts(plan)
    shards = plan.shards(args.shard_size or max(1, len(plan.to_run)))
    report = {"manifest": plan.manifest_uri, **source.to_record(), **counted, "shards": len(shards),
              "estimate": plan.estimate(read_profile(args.profile)),
              "invalid_items": [{"row": p.row, "item_id": p.item_id, "field": p.field, "reason": p.reason}
                                for p in list(plan.invalid.values())[:MAX_LISTED]]}
    for p in report["invalid_items"]:
        print(f"invalid: row {p['row']} item '{p['item_id']}': {p['field']}: {p['reason']}")
    if len(plan.invalid) > MAX_LISTED:
        print(f"... and {len(plan.invalid) - MAX_LISTED} more invalid rows")
    estimate = report["estimate"]
    passes = estimate["unet_passes"]
    print(f"{counted['rows']} rows: {counted['to_run']} to edit, {counted['invalid']} invalid, "
          f"{counted['kept']} already done, {counted['not_selected']} not selected; {len(shards)} shard(s)")
    print(f"UNet passes: {passes['forward']:,} forward, {passes['backward']:,} backward "
          f"({sum(p['forward'] for p in estimate['unet_passes_per_item'].values())} forward per item)")
    if "device_hours" in estimate:
        print(f"estimated {estimate['device_hours']} device-hours on {estimate['profile_device']} "
              f"(profile setting: {estimate['profile_setting']})")
    elif args.profile:
        print(f"no setting of {args.profile} matches this config's LoRA and batch size: no time estimate")
    if args.json:
        write_bytes(args.json, json.dumps(report, indent=2).encode())
    return 1 if plan.invalid else 0


def cmd_from_dragbench(args: argparse.Namespace) -> int:
    rows = import_dragbench(args.directory, args.out, radius=args.radius, inline_masks=args.inline_masks)
    print(json.dumps({"manifest": args.out, "items": len(rows)}))
    return 0




def add_allow_prefix(command) -> None:
    command.add_argument("--allow-prefix", action="append", default=[], metavar="URI",
                         help="also read images and masks under this prefix, e.g. s3://bucket/images/ "
                         "(repeatable; default: only under the manifest's own folder)")


def add_worker_arguments(command, retries: bool = True) -> None:
    command.add_argument("--workers", type=int, default=AUTO_WORKERS, help="items at once, one process "
                         "each (default: one per GPU, 1 on CPU; 0: in this process, for a debugger)")
    if retries:
        command.add_argument("--retries", type=int, default=2, help="retries of transient failures")


def add_commands(commands) -> None:
    run = commands.add_parser("run", help="edit every item of a manifest (Prefect flow)")
    run.add_argument("manifest", help="Parquet manifest URI (local path or s3://…)")
    run.add_argument("--output", required=True, help="output URI for images, records, results")
    library_cli.add_model_arguments(run)
    library_cli.add_config_arguments(run)
    run.add_argument("--items", help="comma-separated item ids to run (others are skipped)")
    add_worker_arguments(run)
    run.add_argument("--profile", help="a measured profile: summary.json gets the device-hours estimate")
    guard = RunGuard()
    run.add_argument("--guard-items", type=int, default=guard.items,
                     help=f"the run guard judges this many first items of each shard (default {guard.items})")
    run.add_argument("--guard-failed-fraction", type=float, default=guard.failed_fraction,
                     help="start no more items once more than this fraction of them failed (default "
                     f"{guard.failed_fraction}; -1: never)")
    add_allow_prefix(run)
    run.set_defaults(run=cmd_run)

    retry = commands.add_parser("retry", help="re-run the failed items of a finished run")
    retry.add_argument("results", help="the run's results.parquet URI")
    retry.add_argument("--include-invalid", action="store_true",
                       help="also re-run invalid items (after the manifest was fixed)")
    retry.add_argument("--selection", help="a retry selection (the studio's Review page writes one): re-run "
                       "exactly its items, with its overrides")
    add_worker_arguments(retry)
    retry.set_defaults(run=cmd_retry)

    plan = commands.add_parser("plan", help="validate and plan a run without editing: items, invalid rows, "
                               "shards, UNet passes, estimated device-hours")
    plan.add_argument("manifest", help="Parquet manifest URI (local path or s3://…)")
    plan.add_argument("--output", help="the run's output URI: items an earlier run finished count as done")
    library_cli.add_model_arguments(plan)
    library_cli.add_config_arguments(plan)
    plan.add_argument("--profile", help="a measured profile for the time estimate (docs/gpu-profile.json, "
                      "docs/throughput.json)")
    plan.add_argument("--shard-size", type=int, help="items per shard (default: one shard)")
    plan.add_argument("--json", help="also write the plan here")
    add_allow_prefix(plan)
    plan.set_defaults(run=cmd_plan)

    manifest = commands.add_parser("manifest", help="check or create manifests")
    actions = manifest.add_subparsers(dest="action", required=True)
    validate = actions.add_parser("validate", help="report every bad row of a manifest")
    validate.add_argument("manifest", help="Parquet manifest URI (local path or s3://…)")
    validate.add_argument("--no-files", action="store_true", help="skip reading images and masks")
    add_allow_prefix(validate)
    library_cli.add_set_argument(validate, help="the run's config overrides, to check rows' params against")
    library_cli.add_model_arguments(validate, default=None)
    validate.set_defaults(run=cmd_validate)
    importer = actions.add_parser("from-dragbench", help="import DragBench samples as a manifest")
    importer.add_argument("directory", help="a folder of DragBench samples (original_image.png and "
                          "meta_data.pkl per sample, in any subfolder)")
    importer.add_argument("--out", required=True, help="manifest URI; images and masks go beside it")
    importer.add_argument("--radius", type=int, help="handle disc radius in px (default: 4%% of "
                          "the shorter side)")
    importer.add_argument("--inline-masks", action="store_true",
                          help="write the masks into the manifest as COCO RLE instead of PNG files")
    importer.set_defaults(run=cmd_from_dragbench)


# The errors a command reports in one line: exit 2 (bad input), or 3 (the output or store cannot be used).
EXPECTED_ERRORS = library_cli.EXPECTED_ERRORS + (
    UnsafePickleError, BadSampleError, FileNotFoundError, ManifestError, OutputInUse, OutputPathError,
    PolicyError, SelectionError)
EXIT_3 = (OutputUnwritable, StoreUnavailable)


if __name__ == "__main__":  # the entry point moved up a floor: say so, never exit 0 having done nothing
    print("dragnext: error: run `dragnext` (or `python -m command`); flows.cli only holds the batch "
          "subcommands", file=sys.stderr)
    sys.exit(2)
