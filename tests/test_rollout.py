"""Rollouts: resumable run directories, pool failures, the CLI, and a real embedded-model run."""

import json
import os
from dataclasses import dataclass

import pytest
from click.testing import CliRunner
from scripted import ScriptedSource
from test_agent import make_skill, make_suite

from t2s.agent import AgentBudget
from t2s.cli import main
from t2s.errors import RunError
from t2s.rollout import (
    RUN_FILE,
    new_run_id,
    resolve_skill,
    run_rollouts,
    suite_spec,
    trajectory_path,
)
from t2s.tasks import load_suite, split_tasks
from t2s.trajectory import Trajectory

TASK_IDS = ("sum-a", "sum-b", "sum-c")


def step(tool, args, section=""):
    return {"thought": "t", "section": section, "tool": tool, "args": args}


# The cases share their data, so a typed-in total solves them all: these tests are about runs,
# not formulas, and values need no formula evaluation by the checker.
SAME_DATA = {name: [10, 20, 30] for name in ("1", "2", "3")}
SOLVE_STEPS = [
    step("write_cells", {"sheet": "Data", "cells": {"A5": 60}}, "Totals"),
    step("finish", {"summary": "done"}),
]


def solve(messages, options):
    """Write the formula on a task's first turn, then finish: the same for every task."""
    return SOLVE_STEPS[0] if len(messages) == 2 else SOLVE_STEPS[1]


SOLVE = [solve]


@pytest.fixture
def suite(tmp_path):
    return make_suite(tmp_path / "suite", TASK_IDS, SAME_DATA)


@pytest.fixture
def skill(tmp_path):
    return make_skill(tmp_path / "skill")


def roll(run_dir, tasks, skill, source, **options):
    options.setdefault("workers", 1)
    options.setdefault("budget", AgentBudget(turns=4))
    return run_rollouts(run_dir, tasks, skill, "skill-dir", "", source, progress=False, **options)


def test_every_task_gets_a_record_and_a_summary(tmp_path, suite, skill):
    run_dir = tmp_path / "run"
    summary = roll(run_dir, suite.tasks, skill, ScriptedSource(SOLVE), run_id="r1", split="all")
    assert (summary.tasks, summary.ran, summary.skipped, summary.solved) == (3, 3, 0, 3)
    assert summary.soft_mean == 1.0 and summary.hard_rate == 1.0 and summary.failures == []
    assert summary.by_kind == {"totals": {"tasks": 3, "solved": 3, "soft": 1.0}}
    assert summary.tokens["prompt"] > 0 and summary.tokens["completion"] > 0
    assert 0.0 <= summary.outside_model_share <= 1.0
    for task in suite.tasks:
        record = Trajectory.load(trajectory_path(run_dir, task.id))
        assert record.task_id == task.id and record.run_id == "r1"
        assert record.label == "success" and record.sections_cited == ["Totals"]
        assert record.suite == str(suite.path.resolve())
        for path in record.outputs.values():
            assert path.startswith(str((run_dir / "outputs" / task.id).resolve()))
            assert os.path.isfile(path)
    info = json.loads((run_dir / RUN_FILE).read_text())
    assert info["run_id"] == "r1" and info["split"] == "all" and info["model"] == "scripted"
    assert info["skill_ref"] == "skill-dir" and info["budget"]["turns"] == 4
    assert info["task_ids"] == list(TASK_IDS) and info["created"]
    assert not (run_dir / "work").exists()  # scratch folders are cleaned up
    # The suite recorded in run.json loads the same tasks again (the analysts rely on it).
    assert [t.id for t in load_suite(info["suite"]).tasks] == list(TASK_IDS)


def test_a_second_run_does_nothing_and_a_deleted_record_alone_reruns(tmp_path, suite, skill):
    run_dir = tmp_path / "run"
    first = ScriptedSource(SOLVE)
    roll(run_dir, suite.tasks, skill, first)
    stamps = {t.id: trajectory_path(run_dir, t.id).stat().st_mtime_ns for t in suite.tasks}

    again = ScriptedSource(SOLVE)
    summary = roll(run_dir, suite.tasks, skill, again)
    assert (summary.ran, summary.skipped, summary.solved) == (0, 3, 3)
    assert again.loads == []  # no model was even loaded
    assert {t.id: trajectory_path(run_dir, t.id).stat().st_mtime_ns for t in suite.tasks} == stamps

    trajectory_path(run_dir, "sum-b").unlink()
    third = ScriptedSource(SOLVE)
    summary = roll(run_dir, suite.tasks, skill, third)
    assert (summary.ran, summary.skipped, summary.solved) == (1, 2, 3)
    assert trajectory_path(run_dir, "sum-a").stat().st_mtime_ns == stamps["sum-a"]
    assert trajectory_path(run_dir, "sum-b").is_file()


def test_a_half_written_or_foreign_record_is_rolled_out_again(tmp_path, suite, skill):
    run_dir = tmp_path / "run"
    roll(run_dir, suite.tasks, skill, ScriptedSource(SOLVE))
    trajectory_path(run_dir, "sum-a").write_text('{"run_id": "r", "task_id": "sum-a", "ste')
    leftover = run_dir / "trajectories" / ".sum-c.json.abc.tmp"  # a killed atomic write
    leftover.write_text("{")
    summary = roll(run_dir, suite.tasks, skill, ScriptedSource(SOLVE))
    assert (summary.ran, summary.skipped) == (1, 2)
    assert Trajectory.load(trajectory_path(run_dir, "sum-a")).label == "success"


def test_resuming_with_another_skill_or_model_is_refused(tmp_path, suite, skill):
    run_dir = tmp_path / "run"
    roll(run_dir, suite.tasks[:1], skill, ScriptedSource(SOLVE))
    with pytest.raises(RunError, match="skill_commit"):
        run_rollouts(run_dir, suite.tasks, skill, "skill-dir", "f00d", ScriptedSource(SOLVE))
    with pytest.raises(RunError, match="model"):
        roll(run_dir, suite.tasks, skill, ScriptedSource(SOLVE, name="other"))
    with pytest.raises(RunError, match="budget"):
        roll(run_dir, suite.tasks, skill, ScriptedSource(SOLVE), budget=AgentBudget(turns=9))
    # The same options resume, and more tasks may join the run.
    summary = roll(run_dir, suite.tasks, skill, ScriptedSource(SOLVE))
    assert (summary.ran, summary.skipped) == (2, 1)


def test_pool_failures_are_recorded_as_failed_attempts(tmp_path, suite, skill):
    class Exploding(ScriptedSource):
        """The back-end breaks (not a ModelError) on the second task's first call."""

        def load(self, *, threads=None, worker_index=0, parallel=1):
            model = super().load(threads=threads, worker_index=worker_index, parallel=parallel)
            chat, first_calls = model.chat, []

            def exploding_chat(messages, options=None):
                if len(messages) == 2:
                    first_calls.append(1)
                    if len(first_calls) == 2:
                        raise RuntimeError("segfault in the back-end")
                return chat(messages, options)

            model.chat = exploding_chat
            return model

    run_dir = tmp_path / "run"
    summary = roll(run_dir, suite.tasks, skill, Exploding(SOLVE))
    failed = dict(summary.failures)
    assert summary.solved == 2 and len(failed) == 1
    ((task_id, why),) = failed.items()
    assert "rollout failed in the pool" in why and "segfault in the back-end" in why
    record = Trajectory.load(trajectory_path(run_dir, task_id))
    assert record.label == "failure" and record.stopped == "error" and record.score == 0.0
    # Recorded, so a rerun does not repeat it.
    assert roll(run_dir, suite.tasks, skill, ScriptedSource(SOLVE)).ran == 0


def test_rollouts_in_two_worker_processes(tmp_path, suite, skill):
    run_dir = tmp_path / "run"
    summary = roll(run_dir, suite.tasks, skill, ScriptedSource(SOLVE), workers=2)
    assert (summary.ran, summary.solved) == (3, 3)
    assert sorted(p.name for p in (run_dir / "trajectories").glob("*.json")) == [
        f"{task_id}.json" for task_id in TASK_IDS
    ]


def test_no_skill_rollout(tmp_path, suite):
    run_dir = tmp_path / "run"
    summary = run_rollouts(
        run_dir, suite.tasks[:1], None, model=ScriptedSource(SOLVE), workers=1, progress=False
    )
    assert summary.solved == 1
    assert json.loads((run_dir / RUN_FILE).read_text())["no_skill"] is True


def test_run_ids_and_suite_specs():
    import re

    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", new_run_id())
    bundled = split_tasks(load_suite("bundled").tasks, "all")[:2]
    assert suite_spec(bundled) == "bundled"


def test_resolve_skill_from_a_directory_and_from_the_repository(tmp_path, skill):
    from t2s.errors import SkillError
    from t2s.repo import SkillsRepo

    loaded, ref, commit = resolve_skill(str(tmp_path / "skill"), tmp_path / "nowhere")
    assert loaded == skill and ref == str(tmp_path / "skill") and commit == ""
    repo = SkillsRepo.init(tmp_path / "repo", from_dir=tmp_path / "skill")
    loaded, ref, commit = resolve_skill("main", tmp_path / "repo")
    assert loaded == skill and ref == "main" and commit == repo.resolve("main")
    with pytest.raises(SkillError, match="no skills repository"):
        resolve_skill("main", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SkillError, match="no SKILL.md"):
        resolve_skill(str(tmp_path / "empty"), tmp_path / "repo")


def test_cli_rollout_with_a_skill_directory(tmp_path, suite, skill, monkeypatch):
    from t2s.cli import rollout_cmd

    monkeypatch.setattr(rollout_cmd, "resolve_model", lambda spec: ScriptedSource(SOLVE, name=spec))
    monkeypatch.chdir(tmp_path)
    args = ["rollout", "--tasks", str(suite.path), "--skill", str(tmp_path / "skill"),
            "--model", "fake-model", "--workers", "1", "--turns", "3", "--limit", "2",
            "--run-id", "cli-run", "--quiet"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "Run cli-run" in result.output and "2 rolled out now" in result.output
    assert "Solved 2/2" in result.output
    assert "totals" in result.output
    run_dir = tmp_path / "runs" / "cli-run"
    assert sorted(p.name for p in (run_dir / "trajectories").glob("*.json")) == [
        "sum-a.json",
        "sum-b.json",
    ]
    assert json.loads((run_dir / RUN_FILE).read_text())["budget"]["turns"] == 3
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "0 rolled out now, 2 already recorded" in again.output


def test_cli_rollout_errors_are_one_line(tmp_path, suite, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["rollout", "--tasks", str(suite.path), "--skill", "nope"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: nope is not a skill directory")
    result = CliRunner().invoke(main, ["rollout", "--tasks", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "Error: task suite" in result.output
    result = CliRunner().invoke(
        main, ["rollout", "--tasks", str(suite.path), "--skill", "x", "--no-skill"]
    )
    assert result.exit_code == 1 and "exclude each other" in result.output
    result = CliRunner().invoke(main, ["rollout", "--tasks", str(suite.path)])
    assert result.exit_code == 1
    assert result.output.startswith("Error: no skill given and no skills repository")


@dataclass
class OneThread:
    """The embedded model on one thread: on a busy machine two threads mostly wait for each
    other (measured 10x slower wall time on 2 shared cores)."""

    path: str
    name: str = ""

    def load(self, *, threads=None, worker_index=0, parallel=1):
        from t2s.models import LlamaSource

        model = LlamaSource(self.path).load(threads=1, worker_index=worker_index, parallel=parallel)
        self.name = model.name
        return model


@pytest.mark.model
def test_real_rollout_with_the_embedded_model(tmp_path, embedded_model_path, skill):
    # Two bundled tasks and the small test skill: a short prompt keeps the test quick.
    tasks = load_suite("bundled").tasks[:2]
    run_dir = tmp_path / "run"
    summary = run_rollouts(
        run_dir,
        tasks,
        skill,
        "skill-dir",
        "",
        OneThread(str(embedded_model_path), embedded_model_path.stem),
        workers=1,
        budget=AgentBudget(turns=2, max_tokens=128),
        progress=False,
    )
    assert summary.tasks == 2 and summary.ran == 2
    for task in tasks:
        record = Trajectory.load(trajectory_path(run_dir, task.id))
        assert record.model == embedded_model_path.stem
        assert record.label in ("success", "failure")
        assert record.tokens["prompt"] > 0 and record.timings["model"] > 0
        assert record.turns >= 1 and len(record.steps) == record.turns
        for item in record.steps:
            # Every reply is either a valid call (the grammar at work) or recorded as invalid.
            assert item.tool or item.error.startswith("invalid step:")
            assert item.section in ("", "Tiny sheets", "Workflow", "Totals")
        if record.error:
            assert record.error.startswith("model failed:")
        assert record.messages[0]["role"] == "system"
        assert len(record.messages) == 2 + 2 * record.turns
        assert sorted(record.outputs) == [case.name for case in task.cases]
