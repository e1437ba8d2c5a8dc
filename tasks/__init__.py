"""The items' work for the flows: batches through the stage graph with stored outputs
(`stages`, `stage_store`), the worker processes they run in (`worker`, `pool`) and the
Prefect task around a batch (`batch_task`). Items pass URIs and small records; each worker
process keeps its own model."""
