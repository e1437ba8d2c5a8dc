"""Shipped manifests (package data): the demo's benchmark scenes and the synthetic examples."""

from pathlib import Path

DEMO_MANIFEST = Path(__file__).resolve().parent / "bench" / "manifest.parquet"
