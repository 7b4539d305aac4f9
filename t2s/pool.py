"""Run `work(model, item)` over many items in worker processes, each with its model loaded once.

The parent never loads a model: each worker calls `source.load(...)` itself, with the machine's
threads split between the workers (GGUF weights are memory-mapped, so workers share them).
Every worker has its own pipe, so the parent always knows which item each worker holds: a
worker that crashes or outlives the per-item timeout costs that item, which is reported as
failed, and a fresh worker takes its place. Results stream back as they finish.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from t2s.errors import ConfigError, ModelError, T2SError
from t2s.models.base import ModelSource
from t2s.progress import Progress

DEFAULT_WORKERS = 2
STOP_GRACE_SECONDS = 5.0  # how long a worker gets to exit on its own before it is killed


@dataclass
class PoolResult:
    index: int  # position of the item in the input
    item: Any
    ok: bool
    value: Any = None
    error: str | None = None  # why it failed: the exception, a crash or a timeout
    seconds: float = 0.0


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    value = os.environ.get("T2S_WORKERS", "").strip()
    if not value:
        return DEFAULT_WORKERS
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(
            f"T2S_WORKERS={value!r} is not a positive whole number; set it to 1 or more"
        )
    return int(value)


def threads_per_worker(workers: int) -> int:
    """The CPU threads each worker's model gets: T2S_THREADS, or the cores split evenly.

    On a busy or shared machine, fewer threads than cores is often much faster; T2S_THREADS
    lets the user say so without changing the number of workers.
    """
    value = os.environ.get("T2S_THREADS", "").strip()
    if not value:
        return max(1, cpu_count() // workers)
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(
            f"T2S_THREADS={value!r} is not a positive whole number; set it to 1 or more"
        )
    return int(value)


def run_pool(
    work: Callable[[Any, Any], Any],
    items: Iterable[Any],
    *,
    model: ModelSource | None,
    workers: int | None = None,
    timeout: float | None = None,
    label: str = "work",
    progress: bool = True,
) -> Iterator[PoolResult]:
    """Yield a PoolResult per item, in the order they finish.

    `workers=1` (or T2S_WORKERS=1) runs in this process. A model that cannot be loaded raises
    ModelError; anything that goes wrong with one item is recorded in its result instead.
    """
    items = list(items)
    count = default_workers() if workers is None else workers
    if os.environ.get("T2S_WORKERS", "").strip() == "1":
        count = 1
    if count < 1:
        raise ConfigError(f"workers must be at least 1, not {count}")
    if not items:
        return
    count = min(count, len(items))
    with Progress(len(items), label, enabled=progress) as bar:
        if count == 1:
            results = _run_in_process(work, items, model, timeout)
        else:
            results = _run_in_workers(work, items, model, count, timeout, label)
        for result in results:
            bar.advance(result.ok)
            yield result


class _ItemTimedOut(BaseException):
    """Raised by SIGALRM; a BaseException so `except Exception` in work code cannot swallow it."""


def _describe(error: BaseException) -> str:
    if isinstance(error, T2SError):
        return str(error)
    frames = traceback.extract_tb(error.__traceback__)
    where = f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {error}{where}"


def _run_one(work, model, index: int, item, timeout: float | None) -> PoolResult:
    use_alarm = bool(timeout) and hasattr(signal, "SIGALRM") and _in_main_thread()
    if use_alarm:
        previous = signal.signal(signal.SIGALRM, _raise_timeout)
        signal.setitimer(signal.ITIMER_REAL, timeout)
    started = time.monotonic()
    try:
        value = work(model, item)
    except _ItemTimedOut:
        return PoolResult(index, item, False, None, f"timed out after {timeout:g}s", timeout)
    except Exception as error:  # noqa: BLE001 - any failure of the work is recorded, not raised
        return PoolResult(index, item, False, None, _describe(error), time.monotonic() - started)
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    return PoolResult(index, item, True, value, None, time.monotonic() - started)


def _raise_timeout(signum, frame):
    raise _ItemTimedOut


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _run_in_process(work, items, source, timeout) -> Iterator[PoolResult]:
    threads = threads_per_worker(1)
    prepare = getattr(source, "prepare", None)
    if prepare is not None:
        prepare()  # the same early errors as with worker processes
    model = source.load(threads=threads, worker_index=0) if source is not None else None
    for index, item in enumerate(items):
        yield _run_one(work, model, index, item, timeout)


# --- worker side -------------------------------------------------------------------------


def _worker_main(conn, work, source, threads: int, slot: int, parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with_parent(parent_pid)
    try:
        model = source.load(threads=threads, worker_index=slot) if source is not None else None
    except Exception as error:  # noqa: BLE001 - the parent turns it into a ModelError
        conn.send(("failed", _describe(error)))
        return
    conn.send(("ready",))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if task is None:
            return
        index, item = task
        result = _run_one(work, model, index, item, None)
        try:
            conn.send(("done", index, result.ok, result.value, result.error, result.seconds))
        except Exception as error:  # noqa: BLE001 - the value does not pickle; nothing was sent
            reason = f"its result cannot be sent back ({_describe(error)})"
            conn.send(("done", index, False, None, reason, result.seconds))


def _die_with_parent(parent_pid: int) -> None:
    """On Linux, have the kernel kill this worker if the parent dies (e.g. by SIGKILL)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


# --- parent side -------------------------------------------------------------------------


@dataclass
class _Worker:
    slot: int
    process: Any
    conn: Any
    ready: bool = False
    index: int | None = None  # the item it is working on
    started: float = 0.0


def _run_in_workers(work, items, source, count, timeout, label) -> Iterator[PoolResult]:
    import multiprocess
    from multiprocess.connection import wait

    # fork starts workers fast and needs nothing pickled; the parent holds no model to copy.
    context = multiprocess.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    prepare = getattr(source, "prepare", None)
    if prepare is not None:
        prepare()  # early errors, and libraries the forked workers share
    threads = threads_per_worker(count)
    pending = deque(range(len(items)))
    crew: dict[int, _Worker] = {}
    model_name = getattr(source, "name", "") or "model"

    def start(slot: int) -> None:
        parent_end, child_end = context.Pipe()
        process = context.Process(
            target=_worker_main,
            args=(child_end, work, source, threads, slot, os.getpid()),
            name=f"t2s-{label}-{slot}",
            daemon=True,
        )
        process.start()
        child_end.close()
        crew[slot] = _Worker(slot, process, parent_end)

    def lost(worker: _Worker, reason: str) -> PoolResult:
        index = worker.index
        seconds = time.monotonic() - worker.started
        return PoolResult(index, items[index], False, None, reason, seconds)

    def replace(worker: _Worker) -> None:
        _stop(worker, kill=True)
        del crew[worker.slot]
        if pending:
            start(worker.slot)

    finished = False
    try:
        for slot in range(count):
            start(slot)
        remaining = len(items)
        while remaining:
            now = time.monotonic()
            for worker in crew.values():
                if worker.ready and worker.index is None and pending:
                    worker.index, worker.started = pending.popleft(), now
                    try:
                        worker.conn.send((worker.index, items[worker.index]))
                    except (BrokenPipeError, OSError):
                        pass  # it died; its exit is noticed below
            deadlines = [
                w.started + timeout for w in crew.values() if timeout and w.index is not None
            ]
            wait_for = min([max(0.0, d - now) for d in deadlines] + [1.0])
            wait(
                [w.conn for w in crew.values()] + [w.process.sentinel for w in crew.values()],
                wait_for,
            )

            for worker in list(crew.values()):
                for message in _messages(worker):
                    if message[0] == "ready":
                        worker.ready = True
                    elif message[0] == "failed":
                        raise ModelError(f"cannot load {model_name} in a worker: {message[1]}")
                    elif message[0] == "done" and message[1] == worker.index:
                        _, index, ok, value, error, seconds = message
                        worker.index = None
                        remaining -= 1
                        yield PoolResult(index, items[index], ok, value, error, seconds)
                if worker.process.exitcode is not None or worker.conn.closed:
                    _stop(worker, kill=False)  # a torn pipe: let it finish dying, then reap it
                    code = worker.process.exitcode
                    if worker.index is None and not worker.ready:
                        raise ModelError(
                            f"a worker crashed while loading {model_name} ({_exit_text(code)})"
                        )
                    if worker.index is not None:
                        remaining -= 1
                        yield lost(worker, f"worker crashed ({_exit_text(code)})")
                    replace(worker)
                elif (
                    timeout
                    and worker.index is not None
                    and time.monotonic() - worker.started > timeout
                ):
                    remaining -= 1
                    yield lost(worker, f"timed out after {timeout:g}s")
                    replace(worker)
        for worker in crew.values():
            try:
                worker.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        finished = True
    finally:
        # Normal end, an error, Ctrl-C or the caller stopping early: no worker outlives us.
        for worker in crew.values():
            _stop(worker, kill=not finished)


def _messages(worker: _Worker) -> Iterator[tuple]:
    """Everything the worker has sent so far; a torn pipe means it died (noticed by the caller)."""
    while not worker.conn.closed:
        try:
            if not worker.conn.poll():
                return
            yield worker.conn.recv()
        except (EOFError, OSError):
            worker.conn.close()
            return


def _stop(worker: _Worker, kill: bool) -> None:
    process = worker.process
    if kill and process.exitcode is None:
        process.terminate()
    process.join(STOP_GRACE_SECONDS)
    if process.exitcode is None:
        process.kill()
        process.join()
    if not worker.conn.closed:
        worker.conn.close()


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"exit code {code}, {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exit code {code}"
