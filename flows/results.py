"""A run's results: one row per manifest item, `summary.json`, and the UI artifacts."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
from prefect.artifacts import create_table_artifact

from manifests.schema import RESULTS, read_table, write_table
from manifests.storage import join, write_bytes


def results_table(rows: list[dict], extra_columns: dict[str, list]) -> pa.Table:
    """The results schema, plus the manifest's own extra columns passed through."""
    table = pa.Table.from_pylist(
        [{**r, "metrics": r.get("metrics") or None, "timings_s": r.get("timings_s") or None}
         for r in rows], schema=RESULTS)
    for name, values in extra_columns.items():
        table = table.append_column(name, pa.array(values))
    return table


def read_results(uri: str) -> list[dict]:
    """A results file's rows, its map columns as dicts (Parquet gives lists of pairs)."""
    rows = read_table(uri).to_pylist()
    for row in rows:
        for name in ("metrics", "timings_s"):
            row[name] = dict(row[name]) if row[name] is not None else None
    return rows


def counts(rows: list[dict]) -> dict[str, int]:
    return dict(Counter(r["status"] for r in rows))


def write_run(output_uri: str, table: pa.Table, summary: dict) -> str:
    """summary.json, then results.parquet last: a results file means the run finished."""
    write_bytes(join(output_uri, "summary.json"), json.dumps(summary, indent=2).encode())
    results_uri = join(output_uri, "results.parquet")
    write_table(table, results_uri)
    return results_uri


def publish_table(rows: list[dict]) -> None:
    create_table_artifact(
        key="bulk-edit-results",
        table=[{"item_id": r["item_id"], "status": r["status"], "error": r["error"] or "",
                "attempts": r["attempts"],
                **{k: round(v, 4) for k, v in (r.get("metrics") or {}).items()},
                "image": r["image_uri"] or "", "preview": r["preview_uri"] or ""} for r in rows],
        description="DragNeXt bulk edit: one row per manifest item")
