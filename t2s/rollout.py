"""Stage 1: every task of a suite through the agent in the pool, one trajectory record each.

A run directory holds `run.json` (what was asked), `trajectories/<task>.json` and
`outputs/<task>/<case>.xlsx`. Records are written whole (temporary file, then rename) by the
worker as soon as a rollout ends, and a task whose record exists is skipped: kill a run
anywhere, start it again, and only the missing attempts run.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from t2s.agent import AgentBudget, run_agent
from t2s.errors import RunError, SkillError
from t2s.fsutil import atomic_write_json, read_json
from t2s.models.base import Model, ModelSource
from t2s.pool import run_pool
from t2s.sandbox import SandboxLimits
from t2s.skill import Skill
from t2s.tasks import BUNDLED_SUITE, Task
from t2s.trajectory import FAILURE, Trajectory

RUN_FILE = "run.json"
TRAJECTORIES_DIR = "trajectories"
OUTPUTS_DIR = "outputs"
WORK_DIR = "work"
# Options that must not change when a run is resumed: the records would mix two experiments.
_FIXED = ("suite", "skill_ref", "skill_commit", "model", "no_skill", "budget")


@dataclass
class RolloutConfig:
    """What a run was asked to do; stored as run.json."""

    run_id: str
    suite: str
    split: str
    skill_ref: str
    skill_commit: str
    no_skill: bool
    model: str
    budget: dict
    sandbox: dict
    timeout: float | None
    task_ids: list[str] = field(default_factory=list)
    created: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class RolloutSummary:
    run_id: str
    run_dir: Path
    tasks: int
    ran: int  # rolled out by this call
    skipped: int  # already recorded
    solved: int
    soft_mean: float
    failures: list[tuple[str, str]]  # (task id, why) of every unsolved task
    by_kind: dict[str, dict]  # kind -> {"tasks", "solved", "soft"}
    tokens: dict[str, int]
    seconds: float  # wall time of this call
    model_seconds: float  # summed over the rollouts of this call
    rollout_seconds: float  # summed over the rollouts of this call

    @property
    def hard_rate(self) -> float:
        return self.solved / self.tasks if self.tasks else 0.0

    @property
    def outside_model_share(self) -> float:
        """Share of rollout time spent in tools, replay, checking and I/O."""
        if self.rollout_seconds <= 0:
            return 0.0
        return max(0.0, 1.0 - self.model_seconds / self.rollout_seconds)


@dataclass
class _Context:
    """Everything a worker needs besides its model and its task (pickled once per worker)."""

    run_dir: Path
    run_id: str
    suite: str
    skill: Skill | None
    skill_ref: str
    skill_commit: str
    budget: AgentBudget
    limits: SandboxLimits


def new_run_id() -> str:
    now = datetime.now(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def trajectory_path(run_dir: Path | str, task_id: str) -> Path:
    return Path(run_dir) / TRAJECTORIES_DIR / f"{_file_name(task_id)}.json"


def run_rollouts(
    run_dir: Path | str,
    tasks: list[Task],
    skill: Skill | None,
    skill_ref: str = "",
    skill_commit: str = "",
    model: ModelSource | None = None,
    *,
    workers: int | None = None,
    parallel: int | None = None,
    budget: AgentBudget | None = None,
    timeout: float | None = 600,
    progress: bool = True,
    run_id: str | None = None,
    suite: str | None = None,
    split: str = "",
    label: str = "rollout",
    sandbox_limits: SandboxLimits | None = None,
) -> RolloutSummary:
    """Roll out every task not yet recorded under `run_dir`; summarise all of them."""
    if model is None:
        raise RunError("no model given for the rollout: pass a ModelSource (see resolve_model)")
    started = time.monotonic()
    run_dir = Path(run_dir)
    budget = budget or AgentBudget()
    limits = sandbox_limits or SandboxLimits()
    config = _start_run(
        run_dir,
        RolloutConfig(
            run_id=run_id or "",
            suite=suite or suite_spec(tasks),
            split=split,
            skill_ref=skill_ref,
            skill_commit=skill_commit,
            no_skill=skill is None,
            model=model.name,
            budget=budget.to_dict(),
            sandbox=limits.to_dict(),
            timeout=timeout,
            task_ids=[task.id for task in tasks],
        ),
    )
    context = _Context(
        run_dir=run_dir.resolve(),
        run_id=config.run_id,
        suite=config.suite,
        skill=skill,
        skill_ref=skill_ref,
        skill_commit=skill_commit,
        budget=budget,
        limits=limits,
    )
    todo = [task for task in tasks if _recorded(run_dir, task.id) is None]
    ran: list[Trajectory] = []
    results = run_pool(
        functools.partial(_rollout_one, context),
        todo,
        model=model,
        workers=workers,
        parallel=parallel,
        timeout=timeout,
        label=label,
        progress=progress,
    )
    for result in results:
        if result.ok:
            ran.append(Trajectory.from_dict(result.value))
        else:
            ran.append(_record_pool_failure(context, result.item, model.name, result))
    with contextlib.suppress(OSError):
        (run_dir / WORK_DIR).rmdir()  # only when empty: nothing is left mid-rollout
    return _summarise(config, run_dir, tasks, ran, time.monotonic() - started)


def _rollout_one(context: _Context, model: Model, task: Task) -> dict:
    """In a worker: one rollout, its record written before the worker reports back."""
    workdir = context.run_dir / WORK_DIR / _file_name(task.id)
    try:
        trajectory = run_agent(
            model,
            task,
            context.skill,
            workdir=workdir,
            output_dir=context.run_dir / OUTPUTS_DIR / _file_name(task.id),
            skill_ref=context.skill_ref,
            skill_commit=context.skill_commit,
            budget=context.budget,
            sandbox_limits=context.limits,
            run_id=context.run_id,
            suite=context.suite,
        )
        trajectory.save(trajectory_path(context.run_dir, task.id))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return trajectory.to_dict()


def _record_pool_failure(context: _Context, task: Task, model_name: str, result) -> Trajectory:
    """A crash or timeout of the worker is an attempt too: it is recorded as a failure."""
    shutil.rmtree(context.run_dir / WORK_DIR / _file_name(task.id), ignore_errors=True)
    trajectory = Trajectory(
        run_id=context.run_id,
        task_id=task.id,
        suite=context.suite,
        case=task.cases[0].name if task.cases else "",
        skill_ref=context.skill_ref,
        skill_commit=context.skill_commit,
        model=model_name,
        instruction=task.instruction,
        label=FAILURE,
        stopped="error",
        error=f"rollout failed in the pool: {result.error}",
    )
    trajectory.timings["total"] = result.seconds
    trajectory.save(trajectory_path(context.run_dir, task.id))
    return trajectory


def _start_run(run_dir: Path, config: RolloutConfig) -> RolloutConfig:
    """Write run.json, or check that the stored one describes the same experiment."""
    path = run_dir / RUN_FILE
    if path.is_file():
        try:
            stored = read_json(path)
        except ValueError:
            raise RunError(f"{path} is not valid JSON: fix or delete it") from None
        if not isinstance(stored, dict):
            raise RunError(f"{path} is not a JSON object: fix or delete it")
        if config.run_id and stored.get("run_id") not in (None, "", config.run_id):
            raise RunError(
                f"{run_dir} holds run {stored.get('run_id')!r}, not {config.run_id!r}: "
                "give another run directory"
            )
        for key in _FIXED:
            if key in stored and stored[key] != getattr(config, key):
                raise RunError(
                    f"{run_dir} was started with {key} {stored[key]!r}, not "
                    f"{getattr(config, key)!r}: resume with the same options or use a new run"
                )
        config.run_id = stored.get("run_id") or config.run_id or new_run_id()
        config.created = stored.get("created") or config.created
        known = [task_id for task_id in stored.get("task_ids", []) if isinstance(task_id, str)]
        config.task_ids = list(dict.fromkeys(known + config.task_ids))
        config.split = config.split or stored.get("split", "")
    else:
        config.run_id = config.run_id or new_run_id()
    config.created = config.created or datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(path, config.to_dict())
    return config


def _recorded(run_dir: Path, task_id: str) -> Trajectory | None:
    """The stored record of a task; None when missing or unreadable (it is then rolled out again)."""
    path = trajectory_path(run_dir, task_id)
    if not path.is_file():
        return None
    try:
        trajectory = Trajectory.load(path)
    except RunError:
        return None
    return trajectory if trajectory.task_id == task_id else None


def _summarise(
    config: RolloutConfig, run_dir: Path, tasks: list[Task], ran: list[Trajectory], seconds: float
) -> RolloutSummary:
    fresh = {trajectory.task_id for trajectory in ran}
    records = {task.id: _recorded(run_dir, task.id) for task in tasks}
    tokens = {"prompt": 0, "completion": 0, "prompt_eval": 0}
    by_kind: dict[str, dict] = {}
    failures = []
    solved, soft = 0, 0.0
    for task in tasks:
        record = records[task.id]
        kind = by_kind.setdefault(task.kind, {"tasks": 0, "solved": 0, "soft": 0.0})
        kind["tasks"] += 1
        if record is None:
            failures.append((task.id, "no trajectory recorded"))
            continue
        for key in tokens:
            tokens[key] += int(record.tokens.get(key, 0))
        soft += record.score
        kind["soft"] += record.score
        if record.solved:
            solved += 1
            kind["solved"] += 1
        else:
            failures.append((task.id, _why(record)))
    for kind in by_kind.values():
        kind["soft"] = kind["soft"] / kind["tasks"]
    return RolloutSummary(
        run_id=config.run_id,
        run_dir=run_dir,
        tasks=len(tasks),
        ran=len(fresh),
        skipped=len(tasks) - len(fresh),
        solved=solved,
        soft_mean=soft / len(tasks) if tasks else 0.0,
        failures=failures,
        by_kind=dict(sorted(by_kind.items())),
        tokens=tokens,
        seconds=seconds,
        model_seconds=sum(t.timings.get("model", 0.0) for t in ran),
        rollout_seconds=sum(t.timings.get("total", 0.0) for t in ran),
    )


def _why(record: Trajectory) -> str:
    if record.error:
        return record.error
    cases = len(record.outputs) or 1
    passed = round(record.score * cases)
    return f"{passed}/{cases} cases passed; stopped by {record.stopped or 'finish'}"


def suite_spec(tasks: list[Task]) -> str:
    """What `load_suite` needs to find these tasks again: `bundled` or the suite directory."""
    if not tasks:
        return ""
    task = tasks[0]
    if task.suite == BUNDLED_SUITE:
        return BUNDLED_SUITE
    for parent in Path(task.cases[0].input_path).resolve().parents:
        if (parent / "dataset.json").is_file():
            return str(parent)
    return task.suite


def resolve_skill(target: str | None, repo_path: Path | str) -> tuple[Skill, str, str]:
    """(skill, ref, commit) for a skill directory or a ref of the skills repository.

    A directory has no commit; a ref is pinned to the commit it names now, so every record of
    the run points at exactly the skill it used.
    """
    if target and Path(target).is_dir():
        if not (Path(target) / "SKILL.md").is_file():
            raise SkillError(f"{target} holds no SKILL.md: give a skill directory or a ref")
        return Skill.from_dir(target), str(Path(target)), ""
    if not Path(repo_path).is_dir():
        if not target:
            raise SkillError(
                f"no skill given and no skills repository at {repo_path}: give --skill DIR "
                "(a folder holding SKILL.md), or create the repository with `t2s init`"
            )
        raise SkillError(
            f"{target} is not a skill directory, and there is no skills repository at "
            f"{repo_path} to look it up as a ref (use --repo)"
        )
    from t2s.repo import SkillsRepo

    repo = SkillsRepo.open(repo_path)
    ref = target or "main"
    commit = repo.resolve(ref)
    return repo.read_skill(commit), ref, commit


def _file_name(task_id: str) -> str:
    return "".join(char if char.isalnum() or char in "-_." else "_" for char in task_id) or "task"
