"""A run's plan and its merge, as plain functions over rows: no Prefect here, so another
engine (Ray, a cron job) can drive the same run, and `dragnext plan` can show one
without starting anything.

`make_plan` reads and validates the manifest (image headers only, concurrently), decides
each row: invalid (with its reason), not selected, kept from an earlier run into the same
output (same inputs, outputs still there), or to run; `Plan.shards` splits the items to
run; `Plan.merge` gives one results row per manifest row once the shards are done. Every
results row of a run is built by `tasks.stages.result_row`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from dragnext.architecture import Architecture
from dragnext.config import EditConfig
from dragnext.cost import estimate
from dragnext.model_source import ModelSource
from manifests.items import (
    VALIDATION_THREADS,
    Problem,
    item_config,
    item_input_digest,
    read_manifest,
    validate_rows,
    with_params,
)
from manifests.schema import MANIFEST, ManifestError
from manifests.storage import Once, exists, is_transient, parent
from manifests.uris import UriPolicy
from tasks.stages import ItemContext, result_row


@dataclass
class Plan:
    manifest_uri: str
    output_uri: str
    model: ModelSource
    model_fingerprint: str
    base: EditConfig
    allow_prefixes: list[str]
    rows: list[dict]  # the manifest's rows, in order
    extra_columns: dict[str, list]  # the manifest's own columns, passed through to the results
    invalid: dict[int, Problem]
    results: list[dict | None]  # decided without running: invalid, not selected, kept
    to_run: dict[str, int]  # item id → row index
    configs: dict[str, dict] = field(default_factory=dict)  # item id → its resolved config
    digests: dict[str, str | None] = field(default_factory=dict)  # item id → its input digest
    previous: dict[str, dict] = field(default_factory=dict)  # what an earlier run left
    # A retry selection's run: a succeeded row is replaced only by a re-edit that succeeds.
    keep_succeeded: bool = False
    kept: dict[str, str] = field(default_factory=dict)  # item id → why its re-edit did not replace it

    @property
    def resumed(self) -> int:
        return sum(1 for r in self.results if r is not None and r["status"] == "succeeded")

    def context(self, item_id: str, row: dict | None = None) -> ItemContext:
        row = row if row is not None else self.rows[self.to_run[item_id]]
        earlier = self.previous.get(item_id)
        return ItemContext(row={k: row[k] for k in MANIFEST.names}, manifest_dir=parent(self.manifest_uri),
                           output_uri=self.output_uri, model=self.model,
                           config=self.configs.get(item_id, self.base.to_record()),
                           allowed_prefixes=tuple(self.allow_prefixes),
                           model_fingerprint=self.model_fingerprint,
                           input_digest=self.digests.get(item_id),
                           previous_attempts=earlier["attempts"] if earlier and item_id in self.to_run else 0)

    def shards(self, size: int) -> list[list[str]]:
        ids = list(self.to_run)
        return [ids[i:i + size] for i in range(0, len(ids), size)]

    def shard_items(self, item_ids: list[str]) -> list[dict]:
        """What a shard needs of its items, so it never reads the manifest again."""
        base = self.base.to_record()
        return [{"row": {k: self.rows[self.to_run[i]][k] for k in MANIFEST.names},
                 "config": None if self.configs[i] == base else self.configs[i],  # None: the run's
                 "input_digest": self.digests.get(i),
                 "previous_attempts": self.previous[i]["attempts"] if i in self.previous else 0}
                for i in item_ids]

    def merge(self, finished: dict[str, dict], lost: dict[str, str]) -> list[dict]:
        """One row per manifest row: the decided ones, each run item's row, and for an item
        with no row a `failed` one saying why (`lost`: item id → what happened to its shard)."""
        merged = list(self.results)
        for item_id, index in self.to_run.items():
            row = finished.get(item_id)
            if row is None:
                earlier = self.previous.get(item_id)
                row = result_row(self.context(item_id), "failed", earlier["attempts"] if earlier else 0,
                                 error=f"not finished: {lost.get(item_id, 'the run ended without its row')}")
            merged[index] = self.kept_or(row)
        return merged

    def kept_or(self, row: dict) -> dict:
        """`row`, or the item's earlier succeeded row where a retry's re-edit did not succeed."""
        earlier = self.previous.get(row["item_id"])
        worse = row["status"] != "succeeded" and earlier and earlier["status"] == "succeeded"
        if self.keep_succeeded and worse:
            self.kept[row["item_id"]] = f"{row['status']}: {row['error']}"
            return earlier
        return row

    def estimate(self, profile: dict | None) -> dict:
        return estimate(len(self.to_run), self.base, profile)


def outputs_exist(row: dict) -> bool:
    return all(row.get(k) and exists(row[k]) for k in ("image_uri", "preview_uri", "record_uri"))


def _look(plan: Plan, index: int, policy: UriPolicy, once: Once) -> tuple[str, str | None, bool]:
    """A valid row's input digest, and whether an earlier run already finished it."""
    row = plan.rows[index]
    item_id = row["item_id"]
    try:
        found = item_input_digest(row, plan.configs[item_id], plan.model_fingerprint, policy, once)
    except (OSError, ValueError) as error:  # changed since it was checked: the worker will say
        if is_transient(error):
            raise
        return item_id, None, False
    earlier = plan.previous.get(item_id)
    kept = bool(earlier and earlier["status"] == "succeeded" and earlier.get("input_digest") == found
                and outputs_exist(earlier))
    return item_id, found, kept


def make_plan(manifest_uri: str, output_uri: str, model: ModelSource | str, model_fingerprint: str,
              base: EditConfig, previous: dict[str, dict], item_filter: list[str] | None = None,
              allow_prefixes: list[str] | None = None, architecture: Architecture | None = None,
              item_params: dict[str, dict] | None = None) -> Plan:
    """Validate the manifest and decide every row (see the module's docstring); `item_params`
    go over the named rows' own `params` (`flows.selection`). Raises `ManifestError` when
    the manifest as a whole cannot be read."""
    conformed = read_manifest(manifest_uri)
    if conformed.problems:
        raise ManifestError(f"manifest {manifest_uri} cannot be read: {'; '.join(conformed.problems)}")
    table = conformed.table
    rows = [with_params(row, (item_params or {}).get(row["item_id"])) for row in table.to_pylist()]
    prefixes = list(allow_prefixes or ())
    policy = UriPolicy(parent(manifest_uri), tuple(prefixes))
    once = Once()  # each distinct file looked at once, by validation and digests together
    invalid = {p.row: p for p in validate_rows(rows, base, policy, row_problems=conformed.row_problems,
                                                architecture=architecture, once=once)}
    plan = Plan(manifest_uri, output_uri, ModelSource.of(model), model_fingerprint, base, prefixes, rows,
                {n: table[n].to_pylist() for n in table.column_names if n not in MANIFEST.names},
                invalid, [None] * len(rows), {}, previous=previous, keep_succeeded=item_params is not None)
    valid = [i for i in range(len(rows)) if i not in invalid]
    base_record = base.to_record()  # one dict shared by every row without params: 100 000 rows stay small
    plan.configs = {rows[i]["item_id"]: item_config(rows[i], base).to_record() if rows[i].get("params")
                    else base_record for i in valid}
    with ThreadPoolExecutor(max_workers=VALIDATION_THREADS) as pool:
        looked = list(pool.map(lambda i: _look(plan, i, policy, once), valid))
    plan.digests = {item_id: found for item_id, found, _ in looked}
    done_before = {item_id for item_id, _, kept in looked if kept}
    wanted = set(item_filter) if item_filter is not None else None
    for index, row in enumerate(rows):
        item_id = row["item_id"]
        if index in invalid:
            p = invalid[index]
            placeholder = {**row, "item_id": item_id or f"<row {index}>"}
            plan.results[index] = plan.kept_or(result_row(
                plan.context(placeholder["item_id"], placeholder), "invalid", 0,
                error=f"item '{p.item_id}': {p.field}: {p.reason}"))
        elif wanted is not None and item_id not in wanted:
            skipped = previous.get(item_id) or result_row(plan.context(item_id, row), "skipped", 0)
            plan.results[index] = skipped
        elif item_id in done_before:
            plan.results[index] = previous[item_id]
        else:
            plan.to_run[item_id] = index
    return plan


def summary_counts(plan: Plan) -> dict[str, Any]:
    return {"rows": len(plan.rows), "to_run": len(plan.to_run), "invalid": len(plan.invalid),
            "kept": plan.resumed,
            "not_selected": len(plan.rows) - len(plan.to_run) - len(plan.invalid) - plan.resumed}
