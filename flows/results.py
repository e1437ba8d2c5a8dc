"""A run's outputs besides the items' own: one small row object per finished item
(`OUT/rows/ID.json`, written as the item finishes, so a killed run loses nothing),
`summary.json` (written before the first item and again at the end), `results.parquet`
(one row per manifest row, merged last) and the UI artifacts."""

from __future__ import annotations

import json
import logging
import os
import posixpath
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pyarrow as pa
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from manifests.schema import RESULTS, STATUSES, ManifestError, read_table, table_bytes
from manifests.storage import (
    OutputUnwritable,
    StoreUnavailable,
    browser_link,
    exists,
    filesystem,
    join,
    link_expiry_s,
    list_names,
    read_bytes,
    with_retries,
    write_bytes,
    write_file_atomic,
)

log = logging.getLogger(__name__)
MAX_LISTED = 1000  # items named in an artifact: the UI stays usable at 100 000 items


def row_uri(output_uri: str, item_id: str) -> str:
    return join(output_uri, "rows", f"{item_id}.json")


def write_row(output_uri: str, row: dict, run_id: str) -> None:
    """One finished item's row, stamped with the flow run that wrote it."""
    write_bytes(row_uri(output_uri, row["item_id"]), json.dumps({**row, "run_id": run_id}).encode())


def _parse_row(path: str, blob: bytes | Exception) -> dict | None:
    """A stored row, or None (with a warning) when it is torn or unreadable: that item
    counts as not finished, so it runs again."""
    try:
        if isinstance(blob, Exception):
            raise blob
        row = json.loads(blob)
        if not isinstance(row, dict) or not isinstance(row.get("item_id"), str) \
                or row.get("status") not in STATUSES or f"{row['item_id']}.json" != posixpath.basename(path):
            raise ValueError("not a results row")
        return row
    except (ValueError, UnicodeDecodeError, OSError) as error:
        log.warning("ignoring the unreadable row %s (%s: %s); its item runs again",
                    path, type(error).__name__, error)
        return None


def read_rows(output_uri: str) -> dict[str, dict]:
    """Every readable item row of an output, by item id."""
    names = [n for n in list_names(join(output_uri, "rows")) if n.endswith(".json") and not n.startswith(".")]
    if not names:
        return {}
    fs, folder = filesystem(join(output_uri, "rows"))
    paths = [join(folder, name) for name in names]
    blobs = with_retries(lambda: fs.cat(paths, on_error="return"),
                         f"reading {len(paths)} rows of {output_uri}")
    rows = [_parse_row(path, blob) for path, blob in blobs.items()]
    return {row["item_id"]: row for row in rows if row is not None}


def results_table(rows: list[dict], extra_columns: dict[str, list]) -> pa.Table:
    """The results schema, plus the manifest's own extra columns passed through."""
    table = pa.Table.from_pylist(
        [{**r, "metrics": r.get("metrics") or None, "timings_s": r.get("timings_s") or None}
         for r in rows], schema=RESULTS)
    for name, values in extra_columns.items():
        table = table.append_column(name, pa.array(values))
    return table


def table_rows(table: pa.Table) -> list[dict]:
    """A results table's rows, its map columns as dicts (Parquet gives lists of pairs)."""
    rows = table.to_pylist()
    for row in rows:
        for name in ("metrics", "timings_s"):
            row[name] = dict(row[name]) if row[name] is not None else None
    return rows


def read_results(uri: str) -> list[dict]:
    return table_rows(read_table(uri))


def previous_rows(output_uri: str) -> dict[str, dict]:
    """What an earlier run into this output left: its results, overlaid by item rows
    written since (a killed run has rows but no results file). A results file that cannot
    be read counts as absent: its items run again."""
    results_uri = join(output_uri, "results.parquet")
    earlier = {}
    if exists(results_uri):
        try:
            earlier = {r["item_id"]: r for r in read_results(results_uri)}
        except (ManifestError, KeyError, TypeError) as error:
            log.warning("ignoring the unreadable %s (%s); its items run again", results_uri, error)
    return {**earlier, **read_rows(output_uri)}


def counts(rows: list[dict]) -> dict[str, int]:
    return dict(Counter(r["status"] for r in rows))


def flagged(rows: list[dict]) -> int:
    """Succeeded items flagged `needs_review` (`dragnext.review`)."""
    return sum(bool(r.get("needs_review")) for r in rows)


def read_summary(output_uri: str) -> dict:
    """A run's summary.json; `FileNotFoundError` names the folder when there is none."""
    uri = join(output_uri, "summary.json")
    try:
        return json.loads(read_bytes(uri))
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri} does not exist: is {output_uri} the output of a run?") from None
    except ValueError as error:
        raise ManifestError(f"{uri} is not a run summary ({error})") from None


def write_summary(output_uri: str, summary: dict) -> None:
    write_bytes(join(output_uri, "summary.json"), json.dumps(summary, indent=2).encode())


def write_final(output_uri: str, table: pa.Table, summary: dict) -> str:
    """results.parquet, then summary.json saying `finished`: a summary never claims results
    that are not there. If the store stays down through every retry, or the output is full
    or read-only, both go to a local fallback folder and `StoreUnavailable` says where."""
    try:
        write_bytes(summary["results_uri"], table_bytes(table))
        write_summary(output_uri, summary)
        return summary["results_uri"]
    except (StoreUnavailable, OutputUnwritable) as error:
        raise StoreUnavailable(f"{error}; {write_fallback(table, summary)}") from error


def write_fallback(table: pa.Table, summary: dict) -> str:
    """summary.json and results.parquet in `DRAGNEXT_FALLBACK_DIR/TIME/`; says where, or
    why not even that worked."""
    folder = Path(os.environ.get("DRAGNEXT_FALLBACK_DIR", "dragnext-fallback")).resolve() \
        / time.strftime("%Y%m%d-%H%M%S")
    try:
        write_file_atomic(str(folder / "results.parquet"), table_bytes(table))
        write_file_atomic(str(folder / "summary.json"), json.dumps(summary, indent=2).encode())
    except OSError as error:
        return f"the results could not be written to the fallback {folder} either ({error})"
    return f"the results were written to {folder} instead"


def read_profile(uri: str | None) -> dict | None:
    """A measured profile (`dragnext.cost`), or None without one."""
    return json.loads(read_bytes(uri)) if uri else None


def metric_percentiles(rows: list[dict]) -> dict[str, dict[str, float]]:
    """p5, p50 and p95 of each metric over the succeeded rows."""
    values: dict[str, list[float]] = {}
    for row in rows:
        for name, value in (row.get("metrics") or {}).items():
            if value is not None and np.isfinite(value):
                values.setdefault(name, []).append(value)
    return {name: {f"p{q}": round(float(np.percentile(v, q)), 4) for q in (5, 50, 95)}
            for name, v in sorted(values.items())}


@dataclass(frozen=True)
class Links:
    """Links in a run's artifacts that open in a browser: presigned URLs for outputs on a
    store that signs (for `expiry_s`); otherwise, with a studio configured
    (`DRAGNEXT_STUDIO_URL`), its Review page and its file links for the run; otherwise the
    path as code. Never a link that lands on "Page not found"."""
    results_uri: str
    expiry_s: int
    studio_url: str | None = None

    @classmethod
    def from_env(cls, results_uri: str) -> Links:
        """Read where used: `DRAGNEXT_LINK_EXPIRY_S` and `DRAGNEXT_STUDIO_URL`."""
        studio = os.environ.get("DRAGNEXT_STUDIO_URL", "").rstrip("/")
        return cls(results_uri, link_expiry_s(), studio or None)

    def url(self, uri: str, item_id: str | None = None, kind: str | None = None) -> str | None:
        try:
            signed = browser_link(uri, self.expiry_s)
        except Exception as error:  # a link that cannot be signed must not fail the run
            log.warning("no link for %s (%s: %s)", uri, type(error).__name__, error)
            signed = None
        if signed or not self.studio_url:
            return signed
        if item_id is None:
            return f"{self.studio_url}/review?{urlencode({'results': self.results_uri})}"
        return f"{self.studio_url}/api/results/file?" + urlencode(
            {"results_uri": self.results_uri, "item_id": item_id, "kind": kind})

    def markdown(self, text: str, uri: str, item_id: str | None = None, kind: str | None = None) -> str:
        url = self.url(uri, item_id, kind)
        return f"[{text}]({url})" if url else f"`{uri}`"

    def to_file(self, text: str, row: dict, kind: str) -> str:
        """A link to one of a results row's files (`preview_uri`, `record_uri`)."""
        return self.markdown(text, row[kind], row["item_id"], kind)


def publish(rows: list[dict], summary: dict, links: Links) -> None:
    """The run on the flow run's Artifacts tab, bounded whatever the run's size: counts,
    metric percentiles, a link to results.parquet, the first `MAX_LISTED` failed or invalid
    items with their errors, the first `MAX_LISTED` flagged for review with their reasons,
    and previews of the first `MAX_LISTED` succeeded ones, linked by `links`."""
    bad = [r for r in rows if r["status"] in ("failed", "invalid")]
    results = links.markdown(summary["results_uri"], summary["results_uri"])
    review = [r for r in rows if r.get("needs_review")]
    lines = [f"**{len(rows)} items**: " + ", ".join(f"{n} {s}" for s, n in sorted(summary["counts"].items())),
             f"**{len(review)} need review** (succeeded, but their metrics say look at them; "
             "`needs_review` in results.parquet)",
             f"results: {results} · {summary['wall_s']} s", "",
             "| metric | p5 | p50 | p95 |", "|---|---|---|---|"]
    lines += [f"| {name} | {p['p5']} | {p['p50']} | {p['p95']} |"
              for name, p in metric_percentiles(rows).items()]
    create_markdown_artifact(key="bulk-edit-summary", markdown="\n".join(lines),
                             description="DragNeXt bulk edit: counts, metrics, results")
    if bad:
        create_table_artifact(
            key="bulk-edit-problems",
            table=[{"item_id": r["item_id"], "status": r["status"], "error": (r["error"] or "")[:500],
                    "attempts": r["attempts"]} for r in bad[:MAX_LISTED]],
            description=f"the first {min(len(bad), MAX_LISTED)} of {len(bad)} failed or invalid items")
    if review:
        create_table_artifact(
            key="bulk-edit-review",
            table=[{"item_id": r["item_id"], "reasons": r["review_reasons"],
                    "preview": links.to_file("preview", r, "preview_uri")}
                   for r in review[:MAX_LISTED]],
            description=f"the first {min(len(review), MAX_LISTED)} of {len(review)} items flagged for review")
    shown = [r for r in rows if r["preview_uri"]][:MAX_LISTED]
    previews = ["| item | preview | record |", "|---|---|---|"]
    previews += [f"| {r['item_id']} | {links.to_file('preview', r, 'preview_uri')} | "
                 f"{links.to_file('record', r, 'record_uri')} |" for r in shown]
    create_markdown_artifact(key="bulk-edit-previews", markdown="\n".join(previews),
                             description=f"previews of the first {len(shown)} edited items")
