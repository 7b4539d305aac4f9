"""`run_analysis`: every trajectory of a run through its analyst, in the pool, each surviving
patch a branch.

Workers analyse (model calls, the error analyst's sandbox and checker); the parent alone
applies patches and writes branches, under the repository's lock. Each trajectory's outcome is
written to `analysis/<task>.json` as soon as it is known, and a rerun skips every trajectory
that already has one, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from t2s.analysts.digest import outcome_text
from t2s.analysts.error import analyze_failure
from t2s.analysts.records import (
    BRANCH,
    DROPPED,
    ERROR,
    ERROR_ANALYST,
    MALFORMED,
    NOT_APPLICABLE,
    PROPOSED,
    REJECTED,
    REPOSITORY,
    SUCCESS_ANALYST,
    WORKER_FAILED,
    AnalysisJob,
    AnalysisRecord,
)
from t2s.analysts.success import analyze_success
from t2s.errors import ConfigError, RepoError, RunError, T2SError
from t2s.fsutil import read_json
from t2s.models.base import Model, ModelSource
from t2s.patch import Patch, apply_patch
from t2s.pool import run_pool
from t2s.repo import PatchCommit, SkillsRepo, patch_branch_name
from t2s.skill import Skill
from t2s.tasks import Suite, Task, get_task, load_suite
from t2s.trajectory import SUCCESS, Trajectory

ANALYSTS = ("error", "success", "combined")
TRAJECTORIES_DIR = "trajectories"
ANALYSIS_DIR = "analysis"
WORK_DIR = "work"
RUN_FILE = "run.json"
DEFAULT_TURNS = 10
DEFAULT_MAX_TOKENS = 1024


@dataclass
class AnalysisSummary:
    run_id: str
    trajectories: int  # in the run
    selected: int  # covered by the chosen analysts
    analysed: int  # by this call
    skipped: int  # already analysed before this call
    seconds: float
    records: list[AnalysisRecord] = field(default_factory=list)  # of every selected trajectory

    def count(self, status: str, analyst: str | None = None) -> int:
        return sum(1 for r in self.records if r.status == status and analyst in (None, r.analyst))

    def fixed(self, analyst: str | None = None) -> int:
        return sum(1 for r in self.records if r.fixed and analyst in (None, r.analyst))

    def reasons(self) -> Counter:
        """(status, reason kind) -> how many records carry it."""
        return Counter((r.status, reason.kind) for r in self.records for reason in r.reasons)

    def to_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "trajectories": self.trajectories,
            "selected": self.selected,
            "analysed": self.analysed,
            "skipped": self.skipped,
            "seconds": self.seconds,
            "fixed": self.fixed(),
            "branches": self.count(BRANCH),
            "rejected": self.count(REJECTED),
            "dropped": self.count(DROPPED),
            "errors": self.count(ERROR),
            "reasons": {f"{s}/{k}": n for (s, k), n in sorted(self.reasons().items())},
        }


def run_analysis(
    run_dir: Path | str,
    repo: SkillsRepo,
    *,
    analysts: str = "combined",
    model: ModelSource,
    workers: int | None = None,
    parallel: int | None = None,
    turns: int = DEFAULT_TURNS,
    timeout: float | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    retry_errors: bool = False,
    progress: bool = True,
) -> AnalysisSummary:
    """Analyse every trajectory of the run at `run_dir` that has no final analysis yet."""
    if analysts not in ANALYSTS:
        raise ConfigError(f"unknown analysts {analysts!r}: use error, success or combined")
    if turns < 1:
        raise ConfigError(f"turns must be at least 1, not {turns}")
    started = time.monotonic()
    run_dir = Path(run_dir)
    plan = _Plan(run_dir, repo, analysts, turns, max_tokens)
    todo = [job for job in plan.jobs if not _is_done(plan.record_path(job), retry_errors)]
    for result in run_pool(
        analyse,
        todo,
        model=model,
        workers=workers,
        parallel=parallel,
        timeout=timeout,
        label="analyze",
        progress=progress,
    ):
        job = result.item
        if result.ok:
            record = result.value
        else:
            record = AnalysisRecord.start(job, plan.labels[job.task.id], model.name)
            record.seconds = result.seconds
            record.fail(WORKER_FAILED, result.error or "the worker failed")
        if record.status == PROPOSED:
            record = _make_branch(repo, plan, job, record)
        record.save(plan.record_path(job))
    records = [
        AnalysisRecord.load(plan.record_path(job))
        for job in plan.jobs
        if plan.record_path(job).is_file()
    ]
    return AnalysisSummary(
        run_id=plan.run_id,
        trajectories=plan.trajectory_count,
        selected=len(plan.jobs),
        analysed=len(todo),
        skipped=len(plan.jobs) - len(todo),
        seconds=time.monotonic() - started,
        records=records,
    )


def analyse(model: Model, job: AnalysisJob) -> AnalysisRecord:
    """The pool's work function: one trajectory through its analyst."""
    if job.analyst == SUCCESS_ANALYST:
        return analyze_success(model, job)
    return analyze_failure(model, job)


class _Plan:
    """What the run holds and what each trajectory needs: task, base skill, patch number."""

    def __init__(self, run_dir: Path, repo: SkillsRepo, analysts: str, turns: int, max_tokens: int):
        trajectories_dir = run_dir / TRAJECTORIES_DIR
        if not trajectories_dir.is_dir():
            raise RunError(f"{run_dir} holds no {TRAJECTORIES_DIR}/: run `t2s rollout` first")
        info = read_json(run_dir / RUN_FILE) if (run_dir / RUN_FILE).is_file() else {}
        if not isinstance(info, dict):
            raise RunError(f"{run_dir / RUN_FILE} is not a JSON object: fix or delete it")
        self.run_dir = run_dir
        self.run_id = str(info.get("run_id") or run_dir.resolve().name)
        self.analysis_dir = run_dir / ANALYSIS_DIR
        paths = sorted(trajectories_dir.glob("*.json"))
        self.trajectory_count = len(paths)
        self.labels: dict[str, str] = {}
        self.skills: dict[str, Skill] = {}
        self.jobs: list[AnalysisJob] = []
        suites: dict[str, Suite] = {}
        for path in paths:
            trajectory = Trajectory.load(path)
            analyst = ERROR_ANALYST if trajectory.label != SUCCESS else SUCCESS_ANALYST
            if analysts not in (analyst, "combined"):
                continue
            suite_spec = str(info.get("suite") or trajectory.suite)
            if not suite_spec:
                raise RunError(f"{path} names no task suite and {run_dir / RUN_FILE} has none")
            if suite_spec not in suites:
                suites[suite_spec] = load_suite(suite_spec)
            suite = suites[suite_spec]
            task = get_task(suite, trajectory.task_id)
            base = self._base_commit(repo, trajectory, info, path)
            self.labels[task.id] = trajectory.label
            self.jobs.append(
                AnalysisJob(
                    run_id=self.run_id,
                    run_dir=str(run_dir),
                    n=_patch_number(suite, task),
                    task=task,
                    trajectory=str(path.relative_to(run_dir)),
                    analyst=analyst,
                    base_commit=base,
                    skill_files=dict(self.skills[base].files),
                    workdir=str(self.analysis_dir / WORK_DIR / path.stem),
                    turns=turns,
                    max_tokens=max_tokens,
                )
            )

    def _base_commit(self, repo: SkillsRepo, trajectory: Trajectory, info: dict, path: Path) -> str:
        ref = trajectory.skill_commit or str(info.get("skill_commit") or "")
        if not ref:
            raise RunError(f"{path} does not say which skill commit the agent ran with")
        try:
            sha = repo.resolve(ref)
        except RepoError:
            raise RunError(
                f"{path} ran with skill commit {ref[:12]}, which {repo.path} does not have: "
                "give the skills repository the rollout used (--repo)"
            ) from None
        if sha not in self.skills:
            self.skills[sha] = repo.read_skill(sha)
        return sha

    def record_path(self, job: AnalysisJob) -> Path:
        return self.analysis_dir / f"{Path(job.trajectory).stem}.json"


def _patch_number(suite: Suite, task: Task) -> int:
    """1 + the task's position among the suite's sorted ids: the same on every rerun."""
    return sorted(t.id for t in suite.tasks).index(task.id) + 1


def _is_done(path: Path, retry_errors: bool) -> bool:
    if not path.is_file():
        return False
    return not (retry_errors and AnalysisRecord.load(path).status == ERROR)


def _make_branch(
    repo: SkillsRepo, plan: _Plan, job: AnalysisJob, record: AnalysisRecord
) -> AnalysisRecord:
    """Apply the proposed patch to its base skill; accepted, it becomes the patch branch."""
    try:
        patch = Patch.from_dict(record.patch)
    except T2SError as error:  # vetted in the worker; a record edited by hand could still fail
        return record.reject(MALFORMED, str(error))
    applied = apply_patch(plan.skills[job.base_commit], patch)
    record.applied = applied.to_dict()
    if applied.rejected:
        return record.reject(NOT_APPLICABLE, applied.rejection)
    commit = PatchCommit(
        lesson="\n".join(patch.lessons),
        reasoning=patch.reasoning,
        run=plan.run_id,
        task=job.task.id,
        trajectory=job.trajectory,
        outcome=record.label,
        analyst=record.analyst,
        model=record.model,
        note=_note(plan, job, record, patch),
    )
    try:
        with repo.lock():
            sha = repo.create_patch_branch(
                plan.run_id, job.n, job.base_commit, applied.skill, commit
            )
    except RepoError as error:
        return record.fail(REPOSITORY, str(error))
    record.status = BRANCH
    record.branch = patch_branch_name(plan.run_id, job.n)
    record.commit = sha
    return record


def _note(plan: _Plan, job: AnalysisJob, record: AnalysisRecord, patch: Patch) -> str:
    """The evidence hung on the patch commit: the task, what happened, what the analyst did."""
    trajectory = Trajectory.load(plan.run_dir / job.trajectory)
    lines = [
        f"Task: {job.task.id} ({job.task.kind}) {job.task.instruction.strip()[:300]}",
        f"Trajectory: {job.trajectory} ({len(trajectory.steps)} steps"
        + (f", stopped by {trajectory.stopped}" if trajectory.stopped else "")
        + f", model {trajectory.model or 'unknown'})",
        outcome_text(trajectory),
    ]
    if record.analyst == SUCCESS_ANALYST:
        lines.append(f"What went right (lean path): {record.solution_path or '(not given)'}")
    else:
        lines.append(
            f"What went wrong and the analyst's checked fix: {record.diagnosis or '(not given)'}"
        )
    lines.append("Lessons:\n" + "\n".join(f"- {lesson}" for lesson in patch.lessons))
    lines.append(f"Edits: {', '.join(edit.describe() for edit in patch.edits)}")
    return "\n".join(lines) + "\n"
