"""One item's work for the flows: its stages with stored outputs (`stages`), the worker
processes it runs in (`worker`, `pool`) and the Prefect task around it (`item_task`).
Items pass URIs and small records; each worker process keeps its own model."""
