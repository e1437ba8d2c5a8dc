"""A run's outputs besides the items' own: one small row object per finished item
(`OUT/rows/ID.json`, written as the item finishes, so a killed run loses nothing),
`summary.json` (written before the first item and again at the end), `results.parquet`
(one row per manifest row, merged last) and the UI artifacts."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from manifests.schema import RESULTS, read_table, table_bytes
from manifests.storage import (
    StoreUnavailable,
    exists,
    filesystem,
    join,
    list_names,
    with_retries,
    write_bytes,
)

FALLBACK_DIR = os.environ.get("DRAGNEXT_FALLBACK_DIR", "dragnext-fallback")


def row_uri(output_uri: str, item_id: str) -> str:
    return join(output_uri, "rows", f"{item_id}.json")


def write_row(output_uri: str, row: dict, run_id: str) -> None:
    """One finished item's row, stamped with the flow run that wrote it."""
    write_bytes(row_uri(output_uri, row["item_id"]), json.dumps({**row, "run_id": run_id}).encode())


def read_rows(output_uri: str) -> dict[str, dict]:
    """Every stored item row of an output, by item id."""
    names = [n for n in list_names(join(output_uri, "rows")) if n.endswith(".json")]
    if not names:
        return {}
    fs, folder = filesystem(join(output_uri, "rows"))
    paths = [join(folder, name) for name in names]
    blobs = with_retries(lambda: fs.cat(paths), f"reading {len(paths)} rows of {output_uri}")
    rows = [json.loads(blob) for blob in blobs.values()]
    return {row["item_id"]: row for row in rows}


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
    written since (a killed run has rows but no results file)."""
    results_uri = join(output_uri, "results.parquet")
    earlier = {r["item_id"]: r for r in read_results(results_uri)} if exists(results_uri) else {}
    return {**earlier, **read_rows(output_uri)}


def counts(rows: list[dict]) -> dict[str, int]:
    return dict(Counter(r["status"] for r in rows))


def write_summary(output_uri: str, summary: dict) -> None:
    write_bytes(join(output_uri, "summary.json"), json.dumps(summary, indent=2).encode())


def write_final(output_uri: str, table: pa.Table, summary: dict) -> str:
    """summary.json, then results.parquet last. If the store stays down through every
    retry, both go to a local fallback folder and `StoreUnavailable` says where."""
    try:
        write_summary(output_uri, summary)
        write_bytes(summary["results_uri"], table_bytes(table))
        return summary["results_uri"]
    except StoreUnavailable as error:
        folder = Path(FALLBACK_DIR).resolve() / time.strftime("%Y%m%d-%H%M%S")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "summary.json").write_text(json.dumps(summary, indent=2))
        (folder / "results.parquet").write_bytes(table_bytes(table))
        raise StoreUnavailable(f"{error}; the results were written to {folder} instead") from error


def publish(rows: list[dict]) -> None:
    """The results table and a page of preview links, on the flow run's Artifacts tab."""
    create_table_artifact(
        key="bulk-edit-results",
        table=[{"item_id": r["item_id"], "status": r["status"], "error": r["error"] or "",
                "attempts": r["attempts"],
                **{k: round(v, 4) for k, v in (r.get("metrics") or {}).items()},
                "image": r["image_uri"] or "", "preview": r["preview_uri"] or ""} for r in rows],
        description="DragNeXt bulk edit: one row per manifest item")
    lines = ["| item | status | preview | record |", "|---|---|---|---|"]
    lines += [f"| {r['item_id']} | {r['status']} | [preview]({r['preview_uri']}) | "
              f"[record]({r['record_uri']}) |" for r in rows if r["preview_uri"]]
    create_markdown_artifact(key="bulk-edit-previews", markdown="\n".join(lines),
                             description="previews of the edited items")
