"""Where items run: in a pool of worker processes (`ProcessRunner`, one per GPU or as many
as asked for on the CPU), so an item that is killed for its memory (or crashes the
interpreter) costs that item, not the run. `workers=0` edits in the run's own process
(`InlineRunner`): for a debugger, at the price of that isolation.

Each worker process keeps its own model (`WorkerState`) and serves one batch of items at a
time over a pipe: the items' contexts go in, their outcomes (rows, and errors) come back,
as plain data. A worker that dies (OOM killer, segfault, SIGKILL) fails only the batch it
was running, with `WorkerLost`; a fresh process takes its place and the other batches go on
(`tasks.batch_task` re-runs the lost batch, bisecting it until it finds the item that kills).
A worker whose parent is gone (the run was killed) exits by itself.

A worker's own log lines (the project's loggers at INFO and above: which device it uses,
the model it loaded) come back over the same pipe while its batch runs, and the run's
process logs them under `tasks.pool.worker` ("[worker PID] …"): where the run's logs go
(Prefect's UI, with `PREFECT_LOGGING_EXTRA_LOGGERS` naming `tasks`), they go too.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import time
from multiprocessing.connection import Connection

import diffusers
import transformers

from tasks.stages import ItemContext, Outcome, edit_items
from tasks.worker import WorkerState

log = logging.getLogger(__name__)
worker_log = logging.getLogger(f"{__name__}.worker")  # the workers' own lines, re-logged here
FORWARDED = ("dragnext", "tasks", "manifests")  # a worker's loggers whose lines come back


class _PipeHandler(logging.Handler):
    """In a worker: the project's log lines sent to the run's process as plain data."""

    def __init__(self, conn: Connection):
        super().__init__(logging.INFO)
        self.conn = conn
        self.addFilter(lambda record: record.name.split(".")[0] in FORWARDED)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.conn.send(("log", record.levelno, record.name, record.getMessage()))
        except Exception:  # a line that cannot be sent is not worth failing an item for
            self.handleError(record)


class WorkerLost(RuntimeError):
    """The worker process running a batch died before it answered."""

    def __init__(self, message: str, exitcode: int | None = None):
        super().__init__(message)
        self.exitcode = exitcode

    @property
    def cause(self) -> str:
        """How it died: the signal that killed it, or its exit code."""
        code = self.exitcode
        if code is not None and code < 0:
            try:
                return f"signal {signal.Signals(-code).name}"
            except ValueError:
                return f"signal {-code}"
        return f"exit code {code}"


CLOSING = "the run is stopping"


class RunStopped(RuntimeError):
    """The run stopped dispatching (interrupted, or its output is full) before this item ran."""


class _Dispatcher:
    """What both runners share: once stopped (for the first reason given), no item starts."""

    stopped: str | None = None

    def stop(self, reason: str) -> None:
        self.stopped = self.stopped or reason

    def refuse_if_stopped(self) -> None:
        if self.stopped:
            raise RunStopped(f"not run: {self.stopped}")


class InlineRunner(_Dispatcher):
    """Batches edited one at a time in this process."""

    def __init__(self) -> None:
        self.worker = WorkerState()

    def __call__(self, contexts: list[ItemContext], attempt: int) -> list[Outcome]:
        self.refuse_if_stopped()
        return edit_items(contexts, self.worker, attempt)

    def close(self, grace_s: float = 0.0) -> None:
        self.stop(CLOSING)


def _exit_with_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(1.0)


def _serve(conn: Connection, parent_pid: int, log_level: int, threads: int | None) -> None:
    """A worker process: edit the batches sent to it until told to stop (None)."""
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s [worker %(process)d]: %(message)s")
    root = logging.getLogger()
    root.handlers[0].setLevel(log_level)  # the console keeps the run's level
    root.setLevel(min(log_level, logging.INFO))
    root.addHandler(_PipeHandler(conn))
    if threads:
        import torch

        torch.set_num_threads(threads)
    # Ctrl-C reaches the whole process group: the run decides when its workers stop (after
    # the item in hand, or killed after a grace period), so a finished item is not lost.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The run's items bar is the user's view; a loading bar per worker would tear it.
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    worker = WorkerState()
    while (message := conn.recv()) is not None:
        contexts, attempt = message
        log.info("editing %s (attempt %d)", ", ".join(c.item_id for c in contexts), attempt)
        try:
            conn.send(("outcomes", _picklable(edit_items(contexts, worker, attempt))))
        except Exception as error:  # sent back as data: the item fails, the worker goes on
            try:
                conn.send(("error", error))
            except Exception:  # an exception that does not pickle
                conn.send(("error", RuntimeError(f"{type(error).__name__}: {error}")))


def _picklable(outcomes: list[Outcome]) -> list[Outcome]:
    """Errors as they are where they pickle, else as a RuntimeError naming them."""
    def safe(error: BaseException | None) -> BaseException | None:
        try:
            pickle.dumps(error)
            return error
        except Exception:
            return RuntimeError(f"{type(error).__name__}: {error}")

    return [(row, safe(error)) for row, error in outcomes]


class _Slot:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, context, threads: int | None) -> None:
        self.conn, child = context.Pipe()
        level = logging.getLogger().getEffectiveLevel()
        self.process = context.Process(target=_serve, daemon=True, name="dragnext-worker",
                                       args=(child, os.getpid(), level, threads))
        self.process.start()
        child.close()

    def _lost(self) -> WorkerLost:
        self.process.join(5)
        return WorkerLost(f"worker process {self.process.pid} died (exit code {self.process.exitcode}) "
                          "while editing this item's batch", self.process.exitcode)

    def run(self, contexts: list[ItemContext], attempt: int) -> list[Outcome]:
        try:
            self.conn.send((contexts, attempt))
            while True:
                while not self.conn.poll(0.5):
                    if not self.process.is_alive():
                        raise self._lost()
                kind, *value = self.conn.recv()
                if kind != "log":
                    break
                level, name, message = value
                worker_log.log(level, "[worker %d] %s: %s", self.process.pid, name, message)
        except (EOFError, OSError):
            raise self._lost() from None
        if kind == "error":
            raise value[0]
        return value[0]

    def ask_to_stop(self) -> None:
        """The worker exits after the item it is editing (if any)."""
        try:
            self.conn.send(None)
        except OSError:
            pass

    def end(self, deadline: float) -> None:
        self.process.join(max(0.0, deadline - time.monotonic()))
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class ProcessRunner(_Dispatcher):
    """Batches edited in `workers` processes at once; call it from as many threads."""

    def __init__(self, workers: int) -> None:
        self._context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        worker_log.setLevel(logging.INFO)  # whatever the root logger's level: listeners decide
        self._threads = cpu_threads(max(1, workers))
        self._free: queue.Queue[_Slot] = queue.Queue()
        self._slots = [_Slot(self._context, self._threads) for _ in range(max(1, workers))]
        for slot in self._slots:
            self._free.put(slot)

    def _replace(self, slot: _Slot) -> _Slot:
        fresh = _Slot(self._context, self._threads)
        self._slots[self._slots.index(slot)] = fresh
        return fresh

    def __call__(self, contexts: list[ItemContext], attempt: int) -> list[Outcome]:
        self.refuse_if_stopped()
        slot = self._free.get()
        try:
            self.refuse_if_stopped()  # stopped while this call waited for a free worker
            if not slot.process.is_alive():  # died between items: nothing was lost
                log.warning("worker %d died while idle; starting a fresh one", slot.process.pid)
                slot = self._replace(slot)
            try:
                return slot.run(contexts, attempt)
            except WorkerLost:
                if self.stopped:  # killed on purpose: the run is stopping
                    raise RunStopped(f"not finished: {self.stopped}") from None
                log.error("items %s: worker %d died; starting a fresh one",
                          ", ".join(c.item_id for c in contexts), slot.process.pid)
                slot = self._replace(slot)
                raise
        finally:
            self._free.put(slot)

    @property
    def pids(self) -> list[int]:
        return [slot.process.pid for slot in self._slots]

    def close(self, grace_s: float = 10.0) -> None:
        """End the workers: each finishes its batch within `grace_s` (0: killed now)."""
        self.stop(CLOSING)
        for slot in self._slots:
            slot.ask_to_stop()
        deadline = time.monotonic() + grace_s
        for slot in self._slots:
            slot.end(deadline)


def cpu_threads(workers: int) -> int | None:
    """Torch threads per worker process: the cores shared out, so that workers on the CPU do
    not oversubscribe it (measured best on 2 cores: 2 workers of 1 thread, `make
    throughput`). None where the user set OMP_NUM_THREADS (theirs wins) or a GPU does the work."""
    import torch

    if os.environ.get("OMP_NUM_THREADS") or torch.cuda.is_available():
        return None
    return max(1, (os.cpu_count() or 1) // workers)


def item_runner(workers: int) -> InlineRunner | ProcessRunner:
    """`workers` processes; 0: this process."""
    return InlineRunner() if workers == 0 else ProcessRunner(workers)


# "One per GPU" as a flow parameter: Prefect's run form cannot show a None default.
AUTO_WORKERS = -1


def default_workers() -> int:
    """One item per GPU at a time; one at a time on the CPU."""
    import torch

    return max(1, torch.cuda.device_count())
