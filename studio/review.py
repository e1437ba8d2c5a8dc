"""The Review page's work: a run's results.parquet as a filtered, sorted, paged list (read
once, 10 000 rows stay cheap: only a page's rows become dicts and only a page's previews
are fetched), one item's record and files, and sending a selection back as a retry.

A results file is untrusted input like a manifest: a row's `preview_uri`, `image_uri` and
`record_uri` are read only where the studio's roots allow (`studio/roots.py`), and served
only as what they are (a PNG, JPEG, WebP, AVIF or GIF image; a JSON record)."""

from __future__ import annotations

import io
import json
import threading
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from dragnext.config import build_config
from flows.results import read_summary, table_rows
from flows.selection import Selection
from manifests.items import MAX_FILE_BYTES
from manifests.schema import read_table
from manifests.storage import filesystem, join, parent, read_bytes, regular_file_size, write_bytes
from manifests.uris import UriPolicy
from studio.roots import Refused

FILE_KINDS = ("preview_uri", "image_uri", "record_uri")
PLAIN_SORTS = ("item_id", "status", "attempts")
SERVED_IMAGES = ("PNG", "JPEG", "WEBP", "AVIF", "GIF")  # what a browser shows as an <img>
# Results files kept open; the least recently used is dropped.
OPEN_RESULTS = 8


class NotServable(ValueError):
    """A row's file that is not what its kind says (answered 415)."""


class Query(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: list[str] = Field(default_factory=list)  # empty: every status
    needs_review: bool | None = None
    drag_type: str | None = None
    metric: str | None = None  # with min and/or max: keep rows whose metric is in range
    min: float | None = None
    max: float | None = None
    sort: str = "item_id"  # a column of PLAIN_SORTS or a metric's name
    descending: bool = False
    page: int = Field(default=0, ge=0)
    per_page: int = Field(default=24, ge=1, le=200)


MAX_SUMMARY_BYTES = 16 * 2**20


def manifest_drag_types(results_uri: str, policy: UriPolicy) -> tuple[dict[str, set[str]], str]:
    """Each item's drag types, read from the run's manifest (results rows carry none): the
    manifest its summary.json names, where the studio's roots allow reading it, a regular
    file of bounded size, only its two columns; and, when they cannot be had, why in one
    sentence. Both files are untrusted: anything wrong with them is the note, never an error."""
    summary = join(parent(results_uri), "summary.json")
    try:
        if regular_file_size(summary) > MAX_SUMMARY_BYTES:
            return {}, f"drag types: {summary} is over {MAX_SUMMARY_BYTES // 2**20} MiB"
        named = json.loads(read_bytes(summary)).get("manifest_uri")
    except (OSError, ValueError, AttributeError):
        return {}, "drag types: the run's summary.json cannot be read"
    if not isinstance(named, str):
        return {}, "drag types: the run's summary.json names no manifest"
    manifest = policy.resolve(named)
    if manifest is None:
        return {}, (f"drag types: the run's manifest {named} is outside the studio's read prefixes "
                    "(--allow-prefix)")
    try:
        if regular_file_size(manifest) > MAX_FILE_BYTES:
            return {}, f"drag types: the run's manifest {named} is over {MAX_FILE_BYTES // 2**20} MiB"
        fs, path = filesystem(manifest)
        with fs.open(path, "rb") as file:  # ranged reads of the two columns, not the whole file
            table = pq.read_table(file, columns=["item_id", "drags"])
        ids, drags = table.column("item_id").to_pylist(), table.column("drags").to_pylist()
        return {item_id: _types(d) for item_id, d in zip(ids, drags, strict=True)}, ""
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
        return {}, f"drag types: the run's manifest {named} cannot be read as a manifest"


def _types(drags) -> set[str]:
    if not isinstance(drags, list):
        return set()
    return {d["type"] for d in drags if isinstance(d, dict) and isinstance(d.get("type"), str)}


class Results:
    """One results file, read once."""

    def __init__(self, uri: str, policy: UriPolicy):
        """`uri` already allowed by the studio's roots; `policy` says what its rows may name."""
        self.uri, self.policy = uri, policy
        table = read_table(self.uri)
        self.table = table
        self.ids = table.column("item_id").to_pylist()
        self.status = np.array(table.column("status").to_pylist(), dtype=object)
        self.attempts = np.array(table.column("attempts").to_pylist(), dtype=float)
        flags = table.column("needs_review").to_pylist() if "needs_review" in table.column_names else []
        self.flagged = np.array([bool(f) for f in flags] or [False] * len(self.ids))
        self.metrics = [dict(m) if m else {} for m in table.column("metrics").to_pylist()]
        self.drag_types_note = ""
        if "drags" in table.column_names:
            self.drag_types = [_types(ds) for ds in table.column("drags").to_pylist()]
        else:
            by_item, self.drag_types_note = manifest_drag_types(uri, policy)
            self.drag_types = [by_item.get(i, set()) for i in self.ids]
        self.index = {item_id: i for i, item_id in enumerate(self.ids)}

    def facets(self) -> dict:
        statuses, counted = np.unique(self.status.astype(str), return_counts=True)
        return {"rows": len(self.ids),
                "statuses": dict(zip(statuses.tolist(), counted.tolist(), strict=True)),
                "needs_review": int(self.flagged.sum()),
                "metrics": sorted({k for m in self.metrics for k in m}),
                "drag_types": sorted({t for ts in self.drag_types for t in ts}),
                "drag_types_note": self.drag_types_note}

    def _metric(self, name: str) -> np.ndarray:
        return np.array([m.get(name, np.nan) if m.get(name) is not None else np.nan for m in self.metrics],
                        dtype=float)

    def query(self, q: Query) -> dict:
        keep = np.ones(len(self.ids), dtype=bool)
        if q.status:
            keep &= np.isin(self.status, q.status)
        if q.needs_review is not None:
            keep &= self.flagged == q.needs_review
        if q.drag_type:
            keep &= np.array([q.drag_type in ts for ts in self.drag_types], dtype=bool)
        if q.metric and (q.min is not None or q.max is not None):
            values = self._metric(q.metric)
            with np.errstate(invalid="ignore"):
                keep &= np.isfinite(values)
                keep &= values >= (q.min if q.min is not None else -np.inf)
                keep &= values <= (q.max if q.max is not None else np.inf)
        chosen = np.flatnonzero(keep)
        key = self._sort_key(q.sort)[chosen]
        order = chosen[np.argsort(key, kind="stable")]
        if q.descending:
            order = order[::-1]
        start = q.page * q.per_page
        page = order[start:start + q.per_page]
        rows = table_rows(self.table.take(pa.array(page, type=pa.int64())))
        return {"total": int(len(order)), "page": q.page, "per_page": q.per_page,
                "rows": [self._row_view(r, self.drag_types[i]) for r, i in zip(rows, page, strict=True)]}

    def _sort_key(self, sort: str) -> np.ndarray:
        if sort == "item_id":
            return np.argsort(np.argsort(np.array([str(i) for i in self.ids], dtype=object), kind="stable"))
        if sort == "status":
            return np.argsort(np.argsort(self.status.astype(str), kind="stable"))
        if sort == "attempts":
            return self.attempts
        values = self._metric(sort)
        return np.where(np.isnan(values), np.inf, values)  # rows without the metric last

    @staticmethod
    def _row_view(row: dict, drag_types: set[str]) -> dict:
        return {"item_id": row["item_id"], "status": row["status"], "error": row.get("error"),
                "attempts": row.get("attempts"), "needs_review": row.get("needs_review"),
                "review_reasons": row.get("review_reasons"), "metrics": row.get("metrics") or {},
                "timings_s": row.get("timings_s") or {},
                "drag_types": sorted(drag_types),
                "has": {k: bool(row.get(k)) for k in FILE_KINDS}}

    def row(self, item_id: str) -> dict:
        [row] = table_rows(self.table.slice(self.index[item_id], 1))
        return row

    def file_uri(self, item_id: str, kind: str) -> str | None:
        """One of the item's own output files (never an arbitrary path), where the roots
        allow it; `Refused` otherwise."""
        if kind not in FILE_KINDS:
            raise KeyError(f"kind: one of {', '.join(FILE_KINDS)}")
        named = self.row(item_id).get(kind)
        if not named:
            return None
        found = self.policy.resolve(named)
        if found is None:
            raise Refused(f"{kind}: item '{item_id}' names a file outside the run's folder and the "
                          "studio's read prefixes (--allow-prefix)")
        return found

    def file(self, item_id: str, kind: str) -> tuple[bytes, str] | None:
        """The file's bytes and its real content type, or None when the row names none."""
        uri = self.file_uri(item_id, kind)
        if uri is None:
            return None
        if regular_file_size(uri) > MAX_FILE_BYTES:
            raise NotServable(f"{kind}: item '{item_id}' names a file over {MAX_FILE_BYTES // 2**20} MiB")
        data = read_bytes(uri)
        return data, served_type(kind, item_id, data)

    def item(self, item_id: str) -> dict:
        row = self.row(item_id)
        record = None
        if row.get("record_uri"):
            try:
                record = json.loads(self.file(item_id, "record_uri")[0])
            except (OSError, ValueError) as error:
                record = {"error": f"the record cannot be read ({type(error).__name__})"}
        return {"row": {k: v for k, v in row.items() if k != "drags"} | {"drags": row.get("drags")},
                "record": record}


def served_type(kind: str, item_id: str, data: bytes) -> str:
    """The content type of a row's file as its bytes say; `NotServable` when they are not
    what the kind promises (a record that is not JSON, an image that is not one)."""
    if kind == "record_uri":
        try:
            json.loads(data)
        except ValueError:
            raise NotServable(f"record_uri: item '{item_id}' names a file that is not JSON") from None
        return "application/json"
    try:
        with Image.open(io.BytesIO(data)) as image:
            found = image.format
    except (OSError, ValueError):
        found = None
    if found not in SERVED_IMAGES:
        raise NotServable(f"{kind}: item '{item_id}' names a file that is not a PNG, JPEG, WebP, AVIF "
                          "or GIF image")
    return Image.MIME.get(found, f"image/{found.lower()}")  # Pillow names no MIME type for AVIF


class ResultsCache:
    """Results files by URI, the last OPEN_RESULTS used; reopened when asked to (a run still
    writing changes them)."""

    def __init__(self, policy_for) -> None:
        self._policy_for = policy_for  # a run's folder -> what its rows may name
        self._open: OrderedDict[str, Results] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, uri: str, reload: bool = False) -> Results:
        """`uri`: absolute, already allowed by the studio's roots. A file is read outside the
        lock: a slow store (or a run's files that never answer) holds up only its own request."""
        with self._lock:
            found = None if reload else self._open.get(uri)
            if found is not None:
                self._open.move_to_end(uri)
                return found
        opened = Results(uri, self._policy_for(parent(uri)))
        with self._lock:
            self._open[uri] = opened
            self._open.move_to_end(uri)
            while len(self._open) > OPEN_RESULTS:
                self._open.popitem(last=False)
        return opened


def send_back(results: Results, items: list[str], overrides: dict,
              launch: Literal["command", "deployment"] = "command") -> dict:
    """Write the selection beside the run's results (`retries/selection-<time>.json`) and say
    how to run it: the `dragnext retry` command, or the retry-failed flow run launched."""
    unknown = [i for i in items if i not in results.index]
    if unknown:
        raise KeyError(f"not items of {results.uri}: {', '.join(map(str, unknown[:5]))}")
    summary = read_summary(parent(results.uri))
    build_config(summary.get("config"), overrides)  # a bad key or value is refused now, not on the GPU
    created = datetime.now(timezone.utc)
    selection = Selection(results_uri=results.uri, items=items, overrides=overrides,
                          created=created.isoformat())
    uri = join(parent(results.uri), "retries", f"selection-{created.strftime('%Y%m%dT%H%M%S%fZ')}.json")
    write_bytes(uri, selection.model_dump_json(indent=2).encode())
    command = f"dragnext retry {results.uri} --selection {uri}"
    out = {"selection_uri": uri, "items": len(items), "command": command}
    if launch == "deployment":
        out["flow_run"] = launch_retry(results.uri, uri)
    return out


def launch_retry(results_uri: str, selection_uri: str) -> dict:
    """A flow run of the retry-failed deployment on the configured Prefect server."""
    from prefect.deployments import run_deployment

    run = run_deployment("retry-failed/retry-failed", timeout=0,
                         parameters={"results_uri": results_uri, "selection_uri": selection_uri})
    return {"id": str(run.id), "name": run.name}
