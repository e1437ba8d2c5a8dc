"""Prefect tasks around the `dragnext` stages. Tasks pass URIs and small records; models
live in a per-process cache and stage results in artefacts under the run's output."""
