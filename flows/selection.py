"""A retry selection: items a person picked (the studio's Review page writes one) to edit
again, with config overrides for them alone. `retry-failed` runs exactly these items; the
overrides go over each item's own `params`, so the rest of the run and its summary keep
the run's config (`manifests.items.with_params`)."""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from manifests.storage import absolute, read_bytes

MAX_SELECTED = 1_000_000


class SelectionError(ValueError):
    """A selection file that cannot be used; names the file and the field."""


class Selection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    results_uri: str
    items: list[str] = Field(min_length=1, max_length=MAX_SELECTED)
    overrides: dict = Field(default_factory=dict)
    created: str = ""


def read_selection(uri: str, results_uri: str) -> Selection:
    """The selection at `uri`, which must be one of `results_uri`'s run."""
    try:
        selection = Selection.model_validate(json.loads(read_bytes(uri)))
    except FileNotFoundError:
        raise SelectionError(f"selection {uri} does not exist") from None
    except ValueError as error:  # JSON and pydantic's errors
        if isinstance(error, ValidationError):
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "<root>"
            raise SelectionError(f"selection {uri}: {where}: {first['msg']}") from None
        raise SelectionError(f"selection {uri} is not JSON ({error})") from None
    if absolute(selection.results_uri) != absolute(results_uri):
        raise SelectionError(f"selection {uri}: results_uri: it selects items of {selection.results_uri}, "
                             f"not of {results_uri}")
    return selection

