"""Where a run's items execute: in the flow's process (one worker), or in a pool of worker
processes (one per GPU, or as many as asked for on the CPU), each keeping its own model."""

from __future__ import annotations

import os

import torch
from prefect.settings import PREFECT_API_URL
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner


def default_workers() -> int:
    """One item per GPU at a time; one at a time on the CPU."""
    return max(1, torch.cuda.device_count())


def _api_url() -> str | None:
    """The API this flow reports to, including the temporary server of ephemeral mode."""
    url = PREFECT_API_URL.value()
    if url:
        return url
    from prefect.server.api.server import SubprocessASGIServer

    servers = list(SubprocessASGIServer._instances.values())
    return servers[0].api_url if servers else None


def _join_api(url: str | None) -> None:
    """Worker initializer: report to the parent's API instead of starting a server of its own."""
    if url:
        os.environ["PREFECT_API_URL"] = url


def task_runner(workers: int) -> TaskRunner:
    if workers <= 1:
        return ThreadPoolTaskRunner(max_workers=1)
    return ProcessPoolTaskRunner(max_workers=workers, initializer=_join_api, initargs=(_api_url(),))
