"""Edit now: the full method on the studio's model, one edit at a time in a worker thread,
so the pages stay responsive (a second tab can review while an edit runs). Each job
reports its stage and the stage's progress for the page's bars. The queue is bounded and
any job can be cancelled: a queued one never starts, a running one stops at its next step."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image

from dragnext.config import EditConfig
from dragnext.edit import STAGES, EditResult, edit
from dragnext.model import DragModel
from dragnext.preview import preview

# Finished jobs kept for the pages to fetch; the oldest go first.
KEEP_JOBS = 32
# Jobs queued or running at once: one more Edit now waits its turn, past that it is refused.
MAX_PENDING = 2
PENDING = ("queued", "loading model", "running")


class QueueFull(RuntimeError):
    """Edit now already has MAX_PENDING jobs (answered 429)."""


class Cancelled(Exception):
    """Raised from the progress callback: the edit stops at its next step."""


@dataclass
class Job:
    id: str
    item_id: str
    status: str = "queued"  # queued | loading model | running | succeeded | failed | cancelled
    stage: str = ""
    done: int = 0
    total: int = 0
    stages_done: list[str] = field(default_factory=list)
    error: str | None = None
    record: dict | None = None
    sheet: Image.Image | None = None  # input | instruction | edited
    edited: Image.Image | None = None
    started: float = field(default_factory=time.time)
    cancel_asked: bool = False

    def progress(self, stage: str, done: int, total: int) -> None:
        if self.cancel_asked:
            raise Cancelled
        if stage != self.stage and self.stage:
            self.stages_done.append(self.stage)
        self.status, self.stage, self.done, self.total = "running", stage, done, total

    def view(self) -> dict:
        return {"id": self.id, "item_id": self.item_id, "status": self.status, "stage": self.stage,
                "done": self.done, "total": self.total, "stages": list(STAGES),
                "stages_done": self.stages_done, "error": self.error, "record": self.record,
                "elapsed_s": round(time.time() - self.started, 2)}


class EditJobs:
    """Runs edits on one model, loaded on the first Edit now (`load` is called once)."""

    def __init__(self, load: Callable[[], DragModel], config: EditConfig):
        self._load, self.config = load, config
        self._model: DragModel | None = None
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edit-now")

    def submit(self, item, config: EditConfig | None = None) -> Job:
        job = Job(id=uuid.uuid4().hex, item_id=item.item_id)
        with self._lock:
            if sum(j.status in PENDING for j in self._jobs.values()) >= MAX_PENDING:
                raise QueueFull(f"Edit now already has {MAX_PENDING} edits queued or running: "
                                "wait for one or cancel it")
            self._jobs[job.id] = job
            for old in list(self._jobs)[:-KEEP_JOBS]:
                del self._jobs[old]
        self._executor.submit(self._run, job, item, config or self.config)
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            return self._jobs[job_id]

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.status in PENDING:
            job.cancel_asked = True
            if job.status == "queued":  # it never starts (_run looks first)
                job.status = "cancelled"
        return job

    def _run(self, job: Job, item, config: EditConfig) -> None:
        if job.cancel_asked:
            return
        try:
            if self._model is None:
                job.status = "loading model"
                self._model = self._load()
            config.check_model(self._model.architecture)
            result: EditResult = edit(item.image, item.instruction, self._model, config, item_id=item.item_id,
                                      callback=job.progress)
        except Cancelled:
            job.status = "cancelled"
            return
        except Exception as error:  # shown on the page: the studio keeps serving
            job.status, job.error = "failed", f"{type(error).__name__}: {error}"
            return
        job.stages_done.append(job.stage)
        job.edited, job.sheet = result.image, preview(result.item, result.image)
        job.record = result.to_record()
        job.status = "succeeded"

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
