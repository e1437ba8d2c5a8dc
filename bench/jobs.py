"""`dragnext bench --jobs N`: cases spread over N spawned processes, one CPU thread each.

A case is one task (all methods on it, so they share its LoRA finetune); results come back
in case order and merge into the same JSON as one process gives, but for `seconds`.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import diffusers
import torch
import transformers
from PIL import Image
from tqdm import tqdm

from bench import run
from bench.cases import Case
from dragnext.model import DragModel, load_model

_model: DragModel | None = None  # one per worker process, loaded once


def _load(spec: str, device: str | None) -> None:
    global _model
    torch.set_num_threads(1)  # N processes share the cores
    diffusers.utils.logging.disable_progress_bar()  # the parent's bar is the one to read
    transformers.utils.logging.disable_progress_bar()
    _model = load_model(spec, device=device)


def _score(case: Case, methods: list[run.Method], base: dict) -> run.Scored:
    return run.score_cases(_model, [case], methods, base, quiet=True)


def run_jobs(spec: str, device: str | None, cases: list[Case], methods: list[run.Method], base: dict,
             jobs: int, quiet: bool = False) -> tuple[dict, dict[str, list[Image.Image]]]:
    """As `run.run`, over `jobs` processes that each load the model `spec`."""
    scored: run.Scored = {m.label: ([], []) for m in methods}
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_load,
                             initargs=(spec, device)) as pool:
        futures = [pool.submit(_score, case, methods, base) for case in cases]
        for future in tqdm(futures, desc=f"{len(methods)} methods, {jobs} jobs", disable=quiet):
            for label, (scores, edited) in future.result().items():
                scored[label][0].extend(scores)
                scored[label][1].extend(edited)
    images = {label: edited for label, (_, edited) in scored.items()}
    return run.results_of(scored, cases, methods, base), images
