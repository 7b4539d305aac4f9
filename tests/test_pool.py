import faulthandler
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner
from scripted import ScriptedSource

from t2s.cli import main
from t2s.errors import ConfigError, ModelError, RunError
from t2s.models import LlamaSource
from t2s.models.base import ChatOptions
from t2s.pool import PoolResult, default_parallel, run_pool, threads_per_worker

ROOT = Path(__file__).resolve().parent.parent


def echo(model, item):
    return {
        "item": item,
        "pid": os.getpid(),
        "reply": model.chat([{"role": "user", "content": "x"}]).text,
    }


def by_index(results):
    return {result.index: result for result in results}


def test_every_item_comes_back_from_worker_processes():
    source = ScriptedSource(["hello"])
    results = list(run_pool(echo, range(6), model=source, workers=2, progress=False))
    assert sorted(r.index for r in results) == list(range(6))
    assert all(r.ok and r.value["reply"] == "hello" and r.value["item"] == r.item for r in results)
    pids = {r.value["pid"] for r in results}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert source.loads == []  # the parent never loaded the model: each worker did


def test_each_worker_loads_its_model_once_with_its_share_of_threads(monkeypatch):
    monkeypatch.setattr("t2s.pool.cpu_count", lambda: 4)

    class CountingSource(ScriptedSource):
        def load(self, *, threads=None, worker_index=0, parallel=1):
            model = super().load(threads=threads, worker_index=worker_index, parallel=parallel)
            model.loaded_with = (os.getpid(), threads, worker_index, len(self.loads))
            return model

    def loaded_with(model, item):
        time.sleep(0.2)  # long enough for the second worker to start and take items
        return model.loaded_with

    results = list(
        run_pool(loaded_with, range(8), model=CountingSource(["x"]), workers=2, progress=False)
    )
    loads = {r.value for r in results}
    assert {threads for _, threads, _, _ in loads} == {2}  # 4 cpus split over 2 workers
    # On a loaded machine one worker may finish everything before the other starts.
    assert {index for _, _, index, _ in loads} <= {0, 1}
    assert len({pid for pid, *_ in loads}) == len({index for _, _, index, _ in loads})
    assert all(times_loaded == 1 for *_, times_loaded in loads)


def test_exceptions_are_recorded_and_the_run_goes_on():
    def picky(model, item):
        if item == 2:
            raise ValueError("item two is bad")
        return item * 10

    results = by_index(run_pool(picky, range(5), model=None, workers=2, progress=False))
    assert [results[i].ok for i in range(5)] == [True, True, False, True, True]
    assert results[2].error.startswith("ValueError: item two is bad")
    assert results[4].value == 40


def test_a_crashed_worker_costs_only_its_item_and_is_replaced():
    def crashy(model, item):
        if item == 1:
            os._exit(3)
        if item == 4:
            faulthandler.disable()  # pytest's handler, inherited by the fork, would print a dump
            os.kill(os.getpid(), signal.SIGSEGV)
        return os.getpid()

    results = by_index(
        run_pool(crashy, range(8), model=ScriptedSource(["x"]), workers=2, progress=False)
    )
    assert sorted(results) == list(range(8))
    assert results[1].error == "worker crashed (exit code 3)"
    assert results[4].error == "worker crashed (exit code -11, SIGSEGV)"
    assert all(results[i].ok for i in (0, 2, 3, 5, 6, 7))


def test_a_hung_item_times_out_and_the_others_finish():
    def sleepy(model, item):
        if item == 0:
            time.sleep(60)
        return item

    started = time.monotonic()
    results = by_index(
        run_pool(sleepy, range(4), model=None, workers=2, timeout=1.5, progress=False)
    )
    assert time.monotonic() - started < 30
    assert results[0].ok is False and results[0].error == "timed out after 1.5s"
    assert [results[i].value for i in (1, 2, 3)] == [1, 2, 3]


def test_results_stream_back_as_they_finish():
    def slow_first(model, item):
        time.sleep(1.0 if item == 0 else 0.05)
        return item

    order = [r.index for r in run_pool(slow_first, range(4), model=None, workers=2, progress=False)]
    assert order[-1] == 0


def test_one_worker_runs_in_process_with_a_timeout():
    source = ScriptedSource(["x"])

    def where(model, item):
        if item == "hang":
            time.sleep(30)
        return os.getpid()

    results = list(
        run_pool(where, ["a", "hang", "b"], model=source, workers=1, timeout=1, progress=False)
    )
    assert source.loads == [0]  # loaded here, once
    assert [r.value for r in results if r.ok] == [os.getpid(), os.getpid()]
    assert results[1].error == "timed out after 1s"


def test_t2s_workers_env_selects_in_process(monkeypatch):
    monkeypatch.setenv("T2S_WORKERS", "1")
    results = list(run_pool(lambda model, item: os.getpid(), range(3), model=None, progress=False))
    assert {r.value for r in results} == {os.getpid()}


def test_bad_worker_counts_are_refused(monkeypatch):
    with pytest.raises(ConfigError, match="at least 1"):
        list(run_pool(echo, [1], model=None, workers=0))
    monkeypatch.setenv("T2S_WORKERS", "many")
    with pytest.raises(ConfigError, match="T2S_WORKERS='many'"):
        list(run_pool(echo, [1], model=None))


def test_a_model_that_cannot_load_stops_the_run_with_its_reason():
    class BrokenSource:
        name = "broken"

        def load(self, *, threads=None, worker_index=0, parallel=1):
            raise ModelError("model file nowhere.gguf not found")

    with pytest.raises(ModelError, match="cannot load broken in a worker: model file nowhere.gguf"):
        list(run_pool(echo, range(3), model=BrokenSource(), workers=2, progress=False))


def test_a_bad_model_file_fails_in_the_parent_before_any_worker_starts(tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_text("not weights")

    def never(model, item):
        raise AssertionError("no item should run")

    with pytest.raises(ModelError, match="notes.gguf is not a GGUF file"):
        list(run_pool(never, range(3), model=LlamaSource(path), workers=2, progress=False))


class Unpicklable:
    def __reduce__(self):
        raise TypeError("cannot pickle this")


def test_a_result_that_cannot_be_sent_back_is_a_failed_item():
    def unpicklable(model, item):
        return Unpicklable() if item == 1 else item

    results = by_index(run_pool(unpicklable, range(3), model=None, workers=2, progress=False))
    assert results[1].ok is False and "cannot be sent back" in results[1].error
    assert results[0].value == 0 and results[2].value == 2


def test_progress_is_reported_on_stderr(capsys):
    list(run_pool(lambda model, item: item, range(3), model=None, workers=2, label="demo"))
    assert "demo" in capsys.readouterr().err


@pytest.mark.parametrize("workers, parallel", [(2, 1), (2, 2), (1, 2)])
def test_ctrl_c_stops_every_worker_and_leaves_no_orphans(tmp_path, workers, parallel):
    script = tmp_path / "interrupted.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, sys, time
            sys.path.insert(0, {str(ROOT)!r})
            from t2s.pool import run_pool

            def stall(model, item):
                name = f"item-{{os.getpid()}}-{{item}}"
                open(os.path.join({str(tmp_path)!r}, name), "w").close()
                time.sleep(60)

            results = run_pool(
                stall, range(8), model=None, workers={workers}, parallel={parallel}, progress=False
            )
            for result in results:
                print(result)
            """
        )
    )
    running = workers * parallel
    process = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while len(list(tmp_path.glob("item-*"))) < running and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = {int(path.name.split("-")[1]) for path in tmp_path.glob("item-*")}
        assert len(list(tmp_path.glob("item-*"))) == running
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0 and "KeyboardInterrupt" in stderr
    for pid in pids:
        assert not _alive(pid), f"worker {pid} outlived the interrupted parent"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state


SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 40}},
    "required": ["answer"],
}


def ask(model, prompt):
    reply = model.chat(
        [{"role": "user", "content": prompt}], ChatOptions(schema=SCHEMA, max_tokens=32)
    )
    return reply.json()


def ask_and_name_the_model(model, prompt):
    return type(model).__name__, ask(model, prompt)


@pytest.mark.model
@pytest.mark.parametrize(("parallel", "kind"), [(1, "LlamaModel"), (3, "BatchedLlamaModel")])
def test_a_two_worker_pool_answers_eight_prompts_with_the_embedded_model(
    embedded_model_path, parallel, kind
):
    source = LlamaSource(embedded_model_path, n_ctx=1024)
    prompts = [f"Name a colour number {n}." for n in range(8)]
    results = list(
        run_pool(
            ask_and_name_the_model,
            prompts,
            model=source,
            workers=2,
            parallel=parallel,
            timeout=120,
            progress=False,
        )
    )
    assert sorted(r.index for r in results) == list(range(8))
    for result in results:
        assert result.ok, result.error
        assert result.value[0] == kind
        jsonschema.validate(result.value[1], SCHEMA)


@pytest.mark.model
def test_a_worker_killed_mid_generation_is_survived_and_reported(embedded_model_path):
    def ask_or_die(model, prompt):
        answer = ask(model, prompt)
        if prompt == "die":
            os.kill(os.getpid(), signal.SIGKILL)  # killed after real work, before replying
        return answer

    prompts = ["Say hi.", "die", "Say bye.", "Say yes."]
    results = by_index(
        run_pool(
            ask_or_die,
            prompts,
            model=LlamaSource(embedded_model_path, n_ctx=2048),
            workers=2,
            timeout=120,
            progress=False,
        )
    )
    assert sorted(results) == [0, 1, 2, 3]
    assert results[1] == PoolResult(
        1, "die", False, None, "worker crashed (exit code -9, SIGKILL)", results[1].seconds
    )
    assert all(results[i].ok for i in (0, 2, 3))


def test_t2s_threads_overrides_the_even_split(monkeypatch):
    monkeypatch.setattr("t2s.pool.cpu_count", lambda: 8)
    assert threads_per_worker(2) == 4
    monkeypatch.setenv("T2S_THREADS", "1")
    assert threads_per_worker(2) == 1
    monkeypatch.setenv("T2S_THREADS", "zero")
    with pytest.raises(ConfigError, match="T2S_THREADS='zero'"):
        threads_per_worker(2)


# --- several items at once in each worker ("parallel") ------------------------------------


class StampingSource(ScriptedSource):
    """Each model knows the `parallel` it was loaded with, so work running in a worker sees it."""

    def load(self, *, threads=None, worker_index=0, parallel=1):
        model = super().load(threads=threads, worker_index=worker_index, parallel=parallel)
        model.parallel = parallel
        return model


def timed(model, item):
    started = time.monotonic()
    time.sleep(0.3)
    return {
        "pid": os.getpid(),
        "start": started,
        "end": time.monotonic(),
        "parallel": model.parallel,
    }


def most_at_once(spans):
    """The largest number of (start, end) spans that overlap at one moment."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running, most = 0, 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def test_each_worker_runs_up_to_parallel_items_at_once():
    results = list(
        run_pool(
            timed, range(12), model=StampingSource(["x"]), workers=2, parallel=3, progress=False
        )
    )
    assert sorted(r.index for r in results) == list(range(12))
    assert all(r.ok for r in results)
    assert {r.value["parallel"] for r in results} == {3}  # each worker loaded for 3 callers
    by_pid = {}
    for r in results:
        by_pid.setdefault(r.value["pid"], []).append((r.value["start"], r.value["end"]))
    overlaps = [most_at_once(spans) for spans in by_pid.values()]
    assert max(overlaps) >= 2  # items really ran together inside one worker
    assert max(overlaps) <= 3  # and never more than `parallel` of them


def test_a_crash_costs_every_item_the_worker_held():
    def crashy(model, item):
        if item == 1:
            time.sleep(0.2)  # its neighbour in the worker is still running
            os._exit(3)
        time.sleep(1.0)
        return item

    results = by_index(
        run_pool(
            crashy, range(6), model=ScriptedSource(["x"]), workers=2, parallel=2, progress=False
        )
    )
    assert sorted(results) == list(range(6))
    failed = [i for i, r in results.items() if not r.ok]
    # Items 0 and 1 were sent to the same worker together.
    assert failed == [0, 1]
    assert {results[i].error for i in failed} == {"worker crashed (exit code 3)"}
    assert [results[i].value for i in (2, 3, 4, 5)] == [2, 3, 4, 5]


def test_a_timeout_requeues_the_other_items_its_worker_held(tmp_path):
    def sleepy(model, item):
        (tmp_path / f"{item}-{os.getpid()}-{time.monotonic_ns()}").touch()
        if item == 0:
            time.sleep(60)
        time.sleep(0.05 if item == 1 else 0.6)
        return item

    results = by_index(
        run_pool(sleepy, range(10), model=None, workers=2, parallel=2, timeout=1.0, progress=False)
    )
    assert results[0].ok is False and results[0].error == "timed out after 1s"
    assert all(results[i].ok and results[i].value == i for i in range(1, 10))
    starts = [int(path.name.split("-")[0]) for path in tmp_path.iterdir()]
    assert starts.count(0) == 1
    # The hung item's worker was running another item when it was killed: that item ran again.
    assert any(starts.count(i) == 2 for i in range(1, 10))


def test_in_process_parallel_runs_items_on_threads():
    import threading

    source = StampingSource(["x"])

    def where(model, item):
        started = time.monotonic()
        reply = model.chat([{"role": "user", "content": str(item)}]).text
        time.sleep(0.3)
        return os.getpid(), threading.get_ident(), started, time.monotonic(), reply

    results = list(run_pool(where, range(4), model=source, workers=1, parallel=2, progress=False))
    assert sorted(r.index for r in results) == list(range(4))
    assert (source.loads, source.parallels) == ([0], [2])  # loaded here, once, for 2 callers
    assert {r.value[0] for r in results} == {os.getpid()}
    assert len({r.value[1] for r in results}) == 2
    assert most_at_once([(r.value[2], r.value[3]) for r in results]) == 2
    assert {r.value[4] for r in results} == {"x"}


def test_parallel_never_exceeds_the_items_a_worker_can_get():
    source = ScriptedSource(["x"])
    list(
        run_pool(
            lambda model, item: item, range(3), model=source, workers=1, parallel=8, progress=False
        )
    )
    assert source.parallels == [3]


def test_bad_parallel_values_are_refused(monkeypatch):
    with pytest.raises(ConfigError, match="parallel must be at least 1"):
        list(run_pool(echo, [1], model=None, workers=1, parallel=0))
    for value in ("0", "x"):
        monkeypatch.setenv("T2S_PARALLEL", value)
        with pytest.raises(ConfigError, match=f"T2S_PARALLEL='{value}' is not a positive"):
            list(run_pool(echo, [1], model=None, workers=1))
    monkeypatch.setenv("T2S_PARALLEL", "2")
    assert default_parallel() == 2


@pytest.mark.parametrize("command", [["rollout"], ["analyze", "some-run"], ["evolve"], ["eval"]])
def test_cli_refuses_parallel_zero(command):
    result = CliRunner().invoke(main, [*command, "--parallel", "0"])
    assert result.exit_code == 2
    assert "Invalid value for '--parallel'" in result.output


class PoolReached(RunError):
    pass


@pytest.mark.parametrize("command", [["rollout", "--no-skill"], ["eval", "--no-skill"]])
def test_cli_parallel_reaches_run_pool(command, tmp_path, monkeypatch):
    import t2s.models
    import t2s.rollout
    from t2s.cli import rollout_cmd

    seen = []

    def fake_pool(work, items, **options):
        seen.append(options["parallel"])
        raise PoolReached("the pool was reached")

    monkeypatch.setattr(t2s.rollout, "run_pool", fake_pool)
    monkeypatch.setattr(rollout_cmd, "resolve_model", lambda spec: ScriptedSource(["x"]))
    monkeypatch.setattr(t2s.models, "resolve_model", lambda spec=None, **kw: ScriptedSource(["x"]))
    monkeypatch.chdir(tmp_path)
    args = [*command, "--tasks", "bundled", "--limit", "1", "--parallel", "2", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.output.startswith("Error: the pool was reached"), result.output
    assert seen == [2]


def test_an_item_that_exits_on_a_thread_is_a_failed_item():
    def exits(model, item):
        if item == 1:
            raise SystemExit("bye")
        return item

    results = by_index(run_pool(exits, range(4), model=None, workers=1, parallel=2, progress=False))
    assert results[1].ok is False and results[1].error.startswith("SystemExit: bye")
    assert [results[i].value for i in (0, 2, 3)] == [0, 2, 3]
