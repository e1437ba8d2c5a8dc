"""A benchmark's ending: its JSON written where asked, its table printed."""

from __future__ import annotations

import json
from pathlib import Path


def publish(report: dict, path: str, table: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2))
    print(table)
