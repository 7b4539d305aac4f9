"""Run `work(model, item)` over many items in worker processes, each with its model loaded once.

The parent never loads a model: each worker calls `source.load(...)` itself, with the machine's
threads split between the workers (GGUF weights are memory-mapped, so workers share them).
Every worker has its own pipe, so the parent always knows which items each worker holds: a
worker that crashes costs every item it held, an item that outlives the per-item timeout is
reported as timed out, and a fresh worker takes the old one's place. Results stream back as
they finish.

With `parallel` > 1 each worker holds up to that many items and runs them in threads, so a
model that batches concurrent `chat` calls (several sequences decoded together) can use them.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from t2s.errors import ConfigError, ModelError, T2SError
from t2s.models.base import ModelSource
from t2s.progress import Progress

DEFAULT_WORKERS = 2
DEFAULT_PARALLEL = 1
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
    return _positive_env("T2S_WORKERS", DEFAULT_WORKERS)


def default_parallel() -> int:
    return _positive_env("T2S_PARALLEL", DEFAULT_PARALLEL)


def _positive_env(variable: str, default: int) -> int:
    value = os.environ.get(variable, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(
            f"{variable}={value!r} is not a positive whole number; set it to 1 or more"
        )
    return int(value)


def threads_per_worker(workers: int) -> int:
    """The CPU threads each worker's model gets: T2S_THREADS, or the cores split evenly.

    On a busy or shared machine, fewer threads than cores is often much faster; T2S_THREADS
    lets the user say so without changing the number of workers.
    """
    return _positive_env("T2S_THREADS", max(1, cpu_count() // workers))


def run_pool(
    work: Callable[[Any, Any], Any],
    items: Iterable[Any],
    *,
    model: ModelSource | None,
    workers: int | None = None,
    parallel: int | None = None,
    timeout: float | None = None,
    label: str = "work",
    progress: bool = True,
) -> Iterator[PoolResult]:
    """Yield a PoolResult per item, in the order they finish.

    `workers=1` (or T2S_WORKERS=1) runs in this process. `parallel` (default T2S_PARALLEL, or 1)
    is how many items each worker runs at once, on threads that share its model. In this process
    with `parallel` > 1 there is no per-item timeout: a thread cannot be stopped from outside.
    A model that cannot be loaded raises ModelError; anything that goes wrong with one item is
    recorded in its result instead.
    """
    items = list(items)
    count = default_workers() if workers is None else workers
    if os.environ.get("T2S_WORKERS", "").strip() == "1":
        count = 1
    if count < 1:
        raise ConfigError(f"workers must be at least 1, not {count}")
    parallel = default_parallel() if parallel is None else parallel
    if parallel < 1:
        raise ConfigError(f"parallel must be at least 1, not {parallel}")
    if not items:
        return
    count = min(count, len(items))
    # No worker needs room for more than its share: the model sizes its context by `parallel`.
    parallel = min(parallel, -(-len(items) // count))
    with Progress(len(items), label, enabled=progress) as bar:
        if count == 1:
            results = _run_in_process(work, items, model, timeout, parallel)
        else:
            results = _run_in_workers(work, items, model, count, parallel, timeout, label)
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


def _run_one_on_thread(work, model, index: int, item) -> PoolResult:
    """`_run_one` on a helper thread, where nothing may escape: the item's result would never
    come back, and the run would wait for it forever."""
    try:
        return _run_one(work, model, index, item, None)
    except BaseException as error:  # noqa: BLE001 - e.g. SystemExit, which cannot end the run here
        return PoolResult(index, item, False, None, _describe(error))


def _raise_timeout(signum, frame):
    raise _ItemTimedOut


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _run_in_process(work, items, source, timeout, parallel: int) -> Iterator[PoolResult]:
    threads = threads_per_worker(1)
    prepare = getattr(source, "prepare", None)
    if prepare is not None:
        prepare()  # the same early errors as with worker processes
    model = (
        source.load(threads=threads, worker_index=0, parallel=parallel)
        if source is not None
        else None
    )
    if parallel == 1:
        for index, item in enumerate(items):
            yield _run_one(work, model, index, item, timeout)
    else:
        yield from _run_in_threads(work, items, model, parallel)


def _run_in_threads(work, items, model, parallel: int) -> Iterator[PoolResult]:
    """Up to `parallel` items at once on threads of this process, all sharing `model`."""
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(len(items)):
        todo.put(index)
    done: queue.SimpleQueue[PoolResult] = queue.SimpleQueue()
    stopping = threading.Event()

    def run_items() -> None:
        while not stopping.is_set():
            try:
                index = todo.get_nowait()
            except queue.Empty:
                return
            done.put(_run_one_on_thread(work, model, index, items[index]))

    # Daemon threads: after Ctrl-C the process exits without waiting for the items in flight.
    for number in range(parallel):
        threading.Thread(target=run_items, name=f"t2s-item-{number}", daemon=True).start()
    try:
        for _ in items:
            yield done.get()
    finally:
        stopping.set()  # when the caller stops early, no thread starts another item


# --- worker side -------------------------------------------------------------------------


def _worker_main(
    conn, work, source, threads: int, number: int, parallel: int, parent_pid: int
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with_parent(parent_pid)
    try:
        model = (
            source.load(threads=threads, worker_index=number, parallel=parallel)
            if source is not None
            else None
        )
    except Exception as error:  # noqa: BLE001 - the parent turns it into a ModelError
        conn.send(("failed", _describe(error)))
        return
    conn.send(("ready",))
    sending = threading.Lock()  # items finish on several threads: one message at a time

    def run_on_thread(index: int, item) -> None:
        result = _run_one_on_thread(work, model, index, item)
        with sending:
            _send_result(conn, result)

    # With parallel 1 the item runs on this thread, as it always has. Otherwise the parent
    # never sends more than `parallel` items at once, so each starts on a free thread.
    executor = ThreadPoolExecutor(parallel, thread_name_prefix="t2s-item") if parallel > 1 else None
    try:
        while True:
            try:
                task = conn.recv()
            except (EOFError, OSError):  # the parent is gone
                return
            if task is None:
                return
            index, item = task
            if executor is None:
                _send_result(conn, _run_one(work, model, index, item, None))
            else:
                executor.submit(run_on_thread, index, item)
    finally:
        if executor is not None:
            executor.shutdown()


def _send_result(conn, result: PoolResult) -> None:
    try:
        conn.send(("done", result.index, result.ok, result.value, result.error, result.seconds))
    except Exception as error:  # noqa: BLE001 - the value does not pickle; nothing was sent
        reason = f"its result cannot be sent back ({_describe(error)})"
        conn.send(("done", result.index, False, None, reason, result.seconds))


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
    number: int
    process: Any
    conn: Any
    ready: bool = False
    held: dict[int, float] = field(default_factory=dict)  # item index -> when it was sent


def _run_in_workers(work, items, source, count, parallel, timeout, label) -> Iterator[PoolResult]:
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

    def start(number: int) -> None:
        parent_end, child_end = context.Pipe()
        process = context.Process(
            target=_worker_main,
            args=(child_end, work, source, threads, number, parallel, os.getpid()),
            name=f"t2s-{label}-{number}",
            daemon=True,
        )
        process.start()
        child_end.close()
        crew[number] = _Worker(number, process, parent_end)

    def lost(worker: _Worker, indices: list[int], reason: str) -> list[PoolResult]:
        now = time.monotonic()
        return [
            PoolResult(index, items[index], False, None, reason, now - worker.held[index])
            for index in indices
        ]

    def replace(worker: _Worker) -> None:
        _stop(worker, kill=True)
        del crew[worker.number]
        if pending:
            start(worker.number)

    finished = False
    try:
        for number in range(count):
            start(number)
        remaining = len(items)
        while remaining:
            now = time.monotonic()
            for worker in crew.values():
                while worker.ready and len(worker.held) < parallel and pending:
                    index = pending.popleft()
                    worker.held[index] = now
                    try:
                        worker.conn.send((index, items[index]))
                    except (BrokenPipeError, OSError):
                        break  # it died; its exit is noticed below
            sent = [started for w in crew.values() for started in w.held.values()]
            deadlines = [started + timeout for started in sent] if timeout else []
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
                    elif message[0] == "done" and message[1] in worker.held:
                        _, index, ok, value, error, seconds = message
                        del worker.held[index]
                        remaining -= 1
                        yield PoolResult(index, items[index], ok, value, error, seconds)
                if worker.process.exitcode is not None or worker.conn.closed:
                    _stop(worker, kill=False)  # a torn pipe: let it finish dying, then reap it
                    code = worker.process.exitcode
                    if not worker.ready:
                        raise ModelError(
                            f"a worker crashed while loading {model_name} ({_exit_text(code)})"
                        )
                    reason = f"worker crashed ({_exit_text(code)})"
                    for result in lost(worker, list(worker.held), reason):
                        remaining -= 1
                        yield result
                    replace(worker)
                elif late := _overdue(worker, timeout):
                    # Killing the worker stops its late items and every other item it held;
                    # those did nothing wrong, so they go back to the front of the queue.
                    pending.extendleft(reversed([i for i in worker.held if i not in late]))
                    for result in lost(worker, late, f"timed out after {timeout:g}s"):
                        remaining -= 1
                        yield result
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


def _overdue(worker: _Worker, timeout: float | None) -> list[int]:
    """The items `worker` has held for longer than `timeout` seconds."""
    if not timeout:
        return []
    now = time.monotonic()
    return [index for index, sent in worker.held.items() if now - sent > timeout]


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
