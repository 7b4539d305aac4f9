"""`t2s eval`: the same tasks with each skill (and without one), side by side.

Each column is one rollout run (`<columns>/<skill commit>/`), so a column already measured is
never measured again, and an interrupted evaluation continues where it stopped. The report
holds one table (solved, soft and hard scores, per kind of task, tokens and time, each with its
difference to the first column), which reference files and SKILL.md sections the agent used,
and a plot. Ablation (`ablate`) measures what each patch of a run does on its own.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from t2s.errors import ConfigError, RunError, TaskError
from t2s.fsutil import atomic_write_json, atomic_write_text
from t2s.report import Table, plot_bars, render_markdown, render_text
from t2s.skill import Skill
from t2s.tasks import Task
from t2s.trajectory import Trajectory

NO_SKILL = "no skill"


@dataclass
class SkillSpec:
    """One column: a skill (a ref of the skills repository, or a directory), or no skill."""

    label: str
    ref: str | None = None
    commit: str | None = None
    skill: Skill | None = None

    @property
    def key(self) -> str:
        """The column's directory name: same skill content, same directory."""
        if self.skill is None:
            return "no-skill"
        if self.commit:
            return self.commit[:12]
        digest = hashlib.sha256(json.dumps(self.skill.files, sort_keys=True).encode()).hexdigest()
        return f"dir-{digest[:12]}"


@dataclass
class TaskOutcome:
    task_id: str
    kind: str
    soft: float
    hard: bool
    tokens: int = 0
    seconds: float = 0.0
    error: str = ""
    references_opened: list[str] = field(default_factory=list)
    sections_cited: list[str] = field(default_factory=list)


@dataclass
class SkillUsage:
    """Which parts of a skill the agent touched, counted over the column's tasks."""

    references_opened: dict[str, int] = field(default_factory=dict)
    sections_cited: dict[str, int] = field(default_factory=dict)
    unused_sections: list[str] = field(default_factory=list)
    unused_references: list[str] = field(default_factory=list)


@dataclass
class ColumnResult:
    label: str
    ref: str | None
    commit: str | None
    run_dir: str
    outcomes: list[TaskOutcome]
    usage: SkillUsage

    @property
    def tasks(self) -> int:
        return len(self.outcomes)

    @property
    def solved(self) -> int:
        return sum(1 for o in self.outcomes if o.hard)

    @property
    def soft(self) -> float:
        return _mean([o.soft for o in self.outcomes])

    @property
    def hard(self) -> float:
        return _mean([1.0 if o.hard else 0.0 for o in self.outcomes])

    @property
    def tokens_per_task(self) -> float:
        return _mean([o.tokens for o in self.outcomes])

    @property
    def seconds_per_task(self) -> float:
        return _mean([o.seconds for o in self.outcomes])

    @property
    def errors(self) -> int:
        return sum(1 for o in self.outcomes if o.error)

    def by_kind(self) -> dict[str, dict[str, float]]:
        kinds: dict[str, list[TaskOutcome]] = {}
        for outcome in self.outcomes:
            kinds.setdefault(outcome.kind, []).append(outcome)
        return {
            kind: {
                "tasks": len(items),
                "soft": _mean([o.soft for o in items]),
                "hard": _mean([1.0 if o.hard else 0.0 for o in items]),
            }
            for kind, items in sorted(kinds.items())
        }

    def summary(self) -> dict:
        return {
            "tasks": self.tasks,
            "solved": self.solved,
            "soft": self.soft,
            "hard": self.hard,
            "tokens_per_task": self.tokens_per_task,
            "seconds_per_task": self.seconds_per_task,
            "errors": self.errors,
            "by_kind": self.by_kind(),
        }

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "ref": self.ref,
            "commit": self.commit,
            "run_dir": self.run_dir,
            "summary": self.summary(),
            "usage": asdict(self.usage),
            "outcomes": [asdict(o) for o in self.outcomes],
        }

    @classmethod
    def from_dict(cls, data: dict) -> ColumnResult:
        return cls(
            label=data["label"],
            ref=data.get("ref"),
            commit=data.get("commit"),
            run_dir=data["run_dir"],
            outcomes=[TaskOutcome(**o) for o in data["outcomes"]],
            usage=SkillUsage(**data["usage"]),
        )


@dataclass
class EvalReport:
    title: str
    suite: str
    split: str
    model: str
    task_ids: list[str]
    columns: list[ColumnResult]
    files: dict[str, str] = field(default_factory=dict)

    def column(self, label: str) -> ColumnResult:
        for column in self.columns:
            if column.label == label:
                return column
        raise KeyError(label)

    def to_dict(self) -> dict:
        return {
            "title": self.title,
            "suite": self.suite,
            "split": self.split,
            "model": self.model,
            "task_ids": self.task_ids,
            "columns": [c.to_dict() for c in self.columns],
            "files": self.files,
        }

    @classmethod
    def from_dict(cls, data: dict) -> EvalReport:
        return cls(
            title=data["title"],
            suite=data["suite"],
            split=data["split"],
            model=data["model"],
            task_ids=list(data["task_ids"]),
            columns=[ColumnResult.from_dict(c) for c in data["columns"]],
            files=dict(data.get("files", {})),
        )


def resolve_skill_specs(repo_path: Path | str, refs: list[str], no_skill: bool) -> list[SkillSpec]:
    """Columns in the order asked: each ref (a skill directory or a ref of the repository)."""
    specs = []
    repo = None
    for ref in refs:
        if Path(ref).is_dir() and (Path(ref) / "SKILL.md").is_file():
            specs.append(SkillSpec(label=ref, ref=ref, skill=Skill.from_dir(ref)))
            continue
        if repo is None:
            from t2s.repo import SkillsRepo

            repo = SkillsRepo.open(repo_path)
        commit = repo.resolve(ref)
        specs.append(SkillSpec(label=ref, ref=ref, commit=commit, skill=repo.read_skill(commit)))
    if no_skill:
        specs.append(SkillSpec(label=NO_SKILL))
    if not specs:
        raise ConfigError("nothing to evaluate: give --skill REF (one or more) or --no-skill")
    labels = [spec.label for spec in specs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"a skill is given twice ({', '.join(labels)}): give each once")
    return specs


def evaluate(
    tasks: list[Task],
    skills: list[SkillSpec],
    no_skill: bool = False,
    *,
    model,
    workers: int = 2,
    parallel: int | None = None,
    out_dir: Path | str,
    budget=None,
    timeout: int = 600,
    columns_dir: Path | str | None = None,
    title: str = "Evaluation",
    suite: str = "",
    split: str = "test",
    progress: bool = True,
) -> EvalReport:
    """Run each column's rollouts (resumable), then write report.md, report.json, scores.png."""
    from t2s.rollout import run_rollouts

    if not tasks:
        raise TaskError("no tasks to evaluate on: check --tasks, --split and --limit")
    specs = list(skills) + ([SkillSpec(label=NO_SKILL)] if no_skill else [])
    if not specs:
        raise ConfigError("nothing to evaluate: give --skill REF (one or more) or --no-skill")
    out_dir = Path(out_dir)
    columns_dir = Path(columns_dir) if columns_dir is not None else out_dir / "columns"
    columns = []
    for spec in specs:
        run_dir = columns_dir / spec.key
        run_rollouts(
            run_dir,
            tasks,
            skill=spec.skill,
            # A column is one commit, whatever ref named it: the shared directory must not
            # refuse `main` because it was first measured as `t2s/<run>/result`.
            skill_ref=spec.commit or spec.ref or "",
            skill_commit=spec.commit or "",
            model=model,
            workers=workers,
            parallel=parallel,
            budget=budget,
            timeout=timeout,
            progress=progress,
            split=split,
            label=f"eval {spec.label}"[:30],
        )
        columns.append(measure_column(spec, run_dir, tasks))
    report = EvalReport(
        title=title,
        suite=suite,
        split=split,
        model=getattr(model, "name", str(model)),
        task_ids=[task.id for task in tasks],
        columns=columns,
    )
    write_report(report, out_dir)
    return report


def measure_column(spec: SkillSpec, run_dir: Path, tasks: list[Task]) -> ColumnResult:
    """Scores and skill usage of one column from its trajectories on disk.

    A task without a trajectory (its worker crashed or hung) counts as failed, so every column
    is measured on the same tasks.
    """
    trajectories = load_trajectories(run_dir)
    outcomes = []
    for task in tasks:
        trajectory = trajectories.get(task.id)
        if trajectory is None:
            outcomes.append(TaskOutcome(task.id, task.kind, 0.0, False, error="no trajectory"))
        else:
            outcomes.append(_outcome(task, trajectory))
    return ColumnResult(
        label=spec.label,
        ref=spec.ref,
        commit=spec.commit,
        run_dir=str(run_dir),
        outcomes=outcomes,
        usage=skill_usage(spec.skill, outcomes),
    )


def load_trajectories(run_dir: Path) -> dict[str, Trajectory]:
    """Trajectory records of a rollout run by task id."""
    found = {}
    for path in sorted((Path(run_dir) / "trajectories").glob("*.json")):
        trajectory = Trajectory.load(path)
        found[trajectory.task_id] = trajectory
    return found


def skill_usage(skill: Skill | None, outcomes: list[TaskOutcome]) -> SkillUsage:
    if skill is None:
        return SkillUsage()
    opened: dict[str, int] = {}
    cited: dict[str, int] = {}
    for outcome in outcomes:
        # Count each task once per file or section: "how many tasks used it".
        for name in set(outcome.references_opened):
            opened[name] = opened.get(name, 0) + 1
        for name in set(outcome.sections_cited):
            cited[name] = cited.get(name, 0) + 1
    titles = [section.title for section in skill.sections()]
    return SkillUsage(
        references_opened=dict(sorted(opened.items(), key=lambda kv: (-kv[1], kv[0]))),
        sections_cited=dict(sorted(cited.items(), key=lambda kv: (-kv[1], kv[0]))),
        unused_sections=[title for title in titles if title not in cited],
        unused_references=[path for path in skill.references() if path not in opened],
    )


def _outcome(task: Task, trajectory: Trajectory) -> TaskOutcome:
    tokens = trajectory.tokens
    return TaskOutcome(
        task_id=task.id,
        kind=task.kind,
        soft=float(trajectory.score),
        hard=bool(trajectory.hard),
        tokens=int(tokens.get("prompt", 0)) + int(tokens.get("completion", 0)),
        seconds=float(trajectory.timings.get("total", 0.0)),
        error=trajectory.error,
        references_opened=list(trajectory.references_opened),
        sections_cited=[name for name in trajectory.sections_cited if name],
    )


# -- the report -------------------------------------------------------------------------------


def score_table(report: EvalReport) -> Table:
    """One row per measure, one column per skill; each cell after the first shows its delta."""
    columns = report.columns
    table = Table(["measure"] + [c.label for c in columns], title=report.title)
    first = columns[0]
    n = len(report.task_ids)

    def row(name: str, values: list[float], fmt: str, lower_is_better: bool = False) -> None:
        cells = [fmt.format(values[0])]
        for value in values[1:]:
            cells.append(f"{fmt.format(value)} ({_signed(value - values[0], fmt)})")
        table.add(name, *cells)

    row(f"solved (of {n})", [c.solved for c in columns], "{:.0f}")
    row("soft score", [c.soft for c in columns], "{:.3f}")
    row("hard score", [c.hard for c in columns], "{:.3f}")
    kinds = sorted({kind for c in columns for kind in c.by_kind()})
    for kind in kinds:
        count = first.by_kind().get(kind, {}).get("tasks", 0)
        row(f"soft: {kind} ({count:.0f})", [c.by_kind().get(kind, {}).get("soft", 0.0) for c in columns], "{:.3f}")
        row(f"hard: {kind} ({count:.0f})", [c.by_kind().get(kind, {}).get("hard", 0.0) for c in columns], "{:.3f}")
    row("tokens / task", [c.tokens_per_task for c in columns], "{:.0f}")
    row("seconds / task", [c.seconds_per_task for c in columns], "{:.1f}")
    row("errors", [c.errors for c in columns], "{:.0f}")
    return table


def usage_table(report: EvalReport) -> Table:
    table = Table(["skill", "references opened (tasks)", "sections cited (tasks)", "sections nobody used"],
                  title="Skill usage")
    for column in report.columns:
        if column.ref is None and column.commit is None and column.label == NO_SKILL:
            continue
        usage = column.usage
        table.add(
            column.label,
            _counts(usage.references_opened) or "none",
            _counts(usage.sections_cited) or "none",
            "; ".join(usage.unused_sections) or "none",
        )
    return table


def format_report(report: EvalReport) -> str:
    """What the terminal shows: the score table, then skill usage."""
    text = render_text(score_table(report))
    usage = usage_table(report)
    if usage.rows:
        text += "\n" + render_text(usage)
    return text


def write_report(report: EvalReport, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    files = {
        "markdown": str(out_dir / "report.md"),
        "json": str(out_dir / "report.json"),
        "plot": str(out_dir / "scores.png"),
    }
    report.files = files
    header = (
        f"Suite `{report.suite}`, {report.split} split, {len(report.task_ids)} tasks, "
        f"model `{report.model}`.\n\n"
    )
    scores = score_table(report)
    scores.title = "Scores"
    markdown = render_markdown(scores)
    usage = usage_table(report)
    if usage.rows:
        markdown += "\n" + render_markdown(usage)
    atomic_write_text(files["markdown"], f"# {report.title}\n\n{header}{markdown}")
    atomic_write_json(files["json"], report.to_dict())
    labels = [c.label for c in report.columns]
    plot_bars(
        labels,
        {"soft": [c.soft for c in report.columns], "hard": [c.hard for c in report.columns]},
        Path(files["plot"]),
        title=f"{report.title}: {len(report.task_ids)} {report.split} tasks",
        ylabel="score",
    )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} ({n})" for name, n in counts.items())


def _signed(delta: float, fmt: str) -> str:
    text = fmt.format(abs(delta))
    if float(text) == 0:
        return "±" + text
    return ("+" if delta > 0 else "-") + text


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


# -- ablation ---------------------------------------------------------------------------------


@dataclass
class LessonEffect:
    """What one patch of a run did, measured twice: alone on the base, and missing from the result."""

    n: int
    branch: str
    lesson: str
    task: str
    in_result: bool
    alone: dict  # summary of the base with only this patch
    without: dict | None  # summary of the result with this patch's edits reverted
    delta_alone: float  # alone soft - base soft
    delta_in_result: float | None  # result soft - without soft: what the patch adds to the result
    note: str = ""

    @property
    def verdict(self) -> str:
        effects = [self.delta_alone] + ([self.delta_in_result] if self.delta_in_result is not None else [])
        if all(abs(e) < 1e-9 for e in effects):
            return "no effect"
        if all(e >= 0 for e in effects):
            return "helped"
        if all(e <= 0 for e in effects):
            return "hurt"
        return "mixed"


@dataclass
class AblationReport:
    run_id: str
    base_commit: str
    result_commit: str
    base: dict
    result: dict
    lessons: list[LessonEffect]
    evaluation: EvalReport
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "base_commit": self.base_commit,
            "result_commit": self.result_commit,
            "base": self.base,
            "result": self.result,
            "lessons": [asdict(lesson) | {"verdict": lesson.verdict} for lesson in self.lessons],
            "evaluation": self.evaluation.files,
            "files": self.files,
        }


def ablation_columns(repo, run_id: str) -> tuple[list[SkillSpec], list[dict]]:
    """The base, the result, each patch alone and the result without each of its patches.

    A patch branch is one commit on the base, so its tip *is* the patch applied alone. Removing a
    patch from the result is a revert: a three-way merge of the result and the base, with the
    patch commit as merge base (the same merge machinery and drivers as consolidation). Each such
    skill is kept as branch `t2s/<run>/ablate/without-<n>`, so a rerun measures the same commit.
    """
    from t2s.repo import patch_branch_name, result_branch_name

    result_ref = result_branch_name(run_id)
    result = repo.resolve(result_ref)
    prefix = f"t2s/{run_id}/patch/"
    patches = sorted(
        ((int(name[len(prefix):]), sha) for name, sha in repo.branches(prefix).items()
         if name[len(prefix):].isdigit()),
    )
    if not patches:
        raise RunError(f"run {run_id} has no patch branches ({prefix}<n>): nothing to ablate")
    base = repo.commit_info(patches[0][1]).parents[0]
    in_result = {info.sha for info in repo.log([result])}
    specs = [
        SkillSpec("base", f"{base[:12]}", base, repo.read_skill(base)),
        SkillSpec("result", result_ref, result, repo.read_skill(result)),
    ]
    lessons = []
    for n, sha in patches:
        info = repo.commit_info(sha)
        branch = patch_branch_name(run_id, n)
        entry = {"n": n, "branch": branch, "lesson": info.subject,
                 "task": info.trailers.get("T2S-Task", ""), "in_result": sha in in_result,
                 "alone": f"patch {n} alone", "without": None, "note": ""}
        specs.append(SkillSpec(entry["alone"], branch, sha, repo.read_skill(sha)))
        if entry["in_result"]:
            without, note = _result_without(repo, run_id, n, result, sha, info.parents[0])
            entry["note"] = note
            if without is not None:
                entry["without"] = f"result without {n}"
                specs.append(SkillSpec(entry["without"], f"t2s/{run_id}/ablate/without-{n}",
                                       without, repo.read_skill(without)))
        else:
            entry["note"] = "not in the result (dropped by consolidation)"
        lessons.append(entry)
    return specs, lessons


def _result_without(repo, run_id, n, result, patch, base) -> tuple[str | None, str]:
    branch = f"t2s/{run_id}/ablate/without-{n}"
    existing = repo.branches(branch).get(branch)
    if existing and repo.commit_info(existing).parents == [result]:
        return existing, ""
    merged = repo.merge_tree(result, base, base=patch)
    if not merged.clean:
        return None, f"its edits cannot be removed cleanly ({', '.join(merged.conflicted_paths)})"
    if merged.tree == repo.tree_of(result):
        return None, "its edits are no longer in the result"
    sha = repo.commit_tree(
        merged.tree, [result], f"Ablation: {run_id} result without patch {n}\n\nT2S-Run: {run_id}\n"
    )
    repo.update_refs({branch: sha})
    return sha, ""


def ablate(
    repo,
    run_id: str,
    tasks: list[Task],
    *,
    model,
    workers: int = 2,
    parallel: int | None = None,
    out_dir: Path | str,
    columns_dir: Path | str | None = None,
    budget=None,
    timeout: int = 600,
    suite: str = "",
    split: str = "test",
    progress: bool = True,
) -> AblationReport:
    """Measure each patch of `run_id` alone on the base and removed from the result."""
    specs, entries = ablation_columns(repo, run_id)
    evaluation = evaluate(
        tasks, specs, model=model, workers=workers, parallel=parallel, out_dir=out_dir,
        columns_dir=columns_dir, budget=budget, timeout=timeout, title=f"Ablation of {run_id}",
        suite=suite, split=split, progress=progress,
    )
    base, result = evaluation.column("base"), evaluation.column("result")
    lessons = []
    for entry in entries:
        alone = evaluation.column(entry["alone"])
        without = evaluation.column(entry["without"]) if entry["without"] else None
        lessons.append(LessonEffect(
            n=entry["n"], branch=entry["branch"], lesson=entry["lesson"], task=entry["task"],
            in_result=entry["in_result"], alone=alone.summary(),
            without=without.summary() if without else None,
            delta_alone=alone.soft - base.soft,
            delta_in_result=(result.soft - without.soft) if without else None,
            note=entry["note"],
        ))
    report = AblationReport(run_id, base.commit, result.commit, base.summary(), result.summary(),
                            lessons, evaluation)
    write_ablation(report, Path(out_dir))
    return report


def ablation_table(report: AblationReport, lesson_chars: int | None = 60) -> Table:
    table = Table(
        ["patch", "lesson", "alone soft", "vs base", "result without", "vs result", "verdict"],
        title=(f"Ablation of {report.run_id}: base soft {report.base['soft']:.3f}, "
               f"result soft {report.result['soft']:.3f}"),
    )
    for lesson in report.lessons:
        table.add(
            lesson.n,
            lesson.lesson[:lesson_chars],
            f"{lesson.alone['soft']:.3f}",
            _signed(lesson.delta_alone, "{:.3f}"),
            f"{lesson.without['soft']:.3f}" if lesson.without else "-",
            # Positive: removing the patch lowers the result's score, so the patch helps there.
            _signed(-lesson.delta_in_result, "{:.3f}") if lesson.delta_in_result is not None
            else (lesson.note or "-"),
            lesson.verdict,
        )
    return table


def format_ablation(report: AblationReport) -> str:
    return render_text(ablation_table(report))


def write_ablation(report: AblationReport, out_dir: Path) -> None:
    report.files = {
        "markdown": str(out_dir / "ablation.md"),
        "json": str(out_dir / "ablation.json"),
        "plot": str(out_dir / "ablation.png"),
    }
    explain = (
        "`vs base`: the patch applied alone, minus the base. `vs result`: the result without the "
        "patch, minus the result (negative means the result is worse without it, so it helps).\n\n"
    )
    atomic_write_text(report.files["markdown"],
                      f"# Ablation of {report.run_id}\n\n{explain}"
                      + render_markdown(ablation_table(report, lesson_chars=None)))
    atomic_write_json(report.files["json"], report.to_dict())
    plot_bars(
        [f"patch {lesson.n}" for lesson in report.lessons],
        {"alone": [lesson.alone["soft"] for lesson in report.lessons],
         "result without": [lesson.without["soft"] if lesson.without else float("nan")
                            for lesson in report.lessons]},
        Path(report.files["plot"]),
        title=f"{report.run_id}: base {report.base['soft']:.2f}, result {report.result['soft']:.2f}",
        ylabel="soft score",
    )


# -- from options (what `t2s eval` calls) ---------------------------------------------------


def run_eval(config, progress: bool = True, model_source=None) -> EvalReport | AblationReport:
    """`t2s eval`: the tasks, columns and directories the options name, then `evaluate`/`ablate`.

    Columns are measured once per (tasks, model, budgets) under
    `<runs>/eval-columns/<key>/<skill commit>/` and shared by every evaluation of those tasks;
    the report goes to `--out`, by default `<runs>/eval-<key of tasks and columns>/`, so the
    same command run again continues where it stopped and rewrites the same report.
    """
    from t2s.models import resolve_model
    from t2s.tasks import load_suite, split_tasks

    suite = load_suite(config.tasks)
    tasks = limit_tasks(split_tasks(suite.tasks, config.split, config.split_ratio), config.limit)
    runs_dir = Path(config.runs_dir)
    # What to measure is checked before the model is loaded: mistakes fail fast.
    if config.ablate:
        from t2s.repo import SkillsRepo

        repo = SkillsRepo.open(config.repo)
        run_id = resolve_ablation_run(repo, runs_dir, config.ablate)
    else:
        specs = resolve_skill_specs(config.repo, config.skills, config.no_skill)
    model = model_source if model_source is not None else resolve_model(config.model)
    columns_dir = measurement_dir(config, suite, tasks, model)
    measured = columns_dir.name
    common = {"model": model, "workers": config.workers, "parallel": config.parallel,
              "columns_dir": columns_dir, "budget": agent_budget(config), "timeout": config.timeout, "suite": suite.name,
              "split": config.split, "progress": progress}
    if config.ablate:
        out = config.out or runs_dir / f"ablate-{run_id}-{measured[:8]}"
        return ablate(repo, run_id, tasks, out_dir=out, **common)
    out = config.out or runs_dir / f"eval-{_digest([measured] + [s.key for s in specs])[:12]}"
    return evaluate(tasks, specs, out_dir=out, title="Evaluation", **common)


def limit_tasks(tasks: list[Task], limit: int | None) -> list[Task]:
    """The first `limit` tasks taking each kind in turn, so a small sample covers many kinds.

    Suites list tasks grouped by kind; a plain prefix would measure one kind only.
    """
    if not limit or limit >= len(tasks):
        return list(tasks)
    queues: dict[str, list[Task]] = {}
    for task in tasks:
        queues.setdefault(task.kind, []).append(task)
    chosen: list[Task] = []
    while len(chosen) < limit:
        for queue in queues.values():
            if queue and len(chosen) < limit:
                chosen.append(queue.pop(0))
    return chosen


def measurement_dir(config, suite, tasks: list[Task], model) -> Path:
    """Where columns measured on exactly these tasks, model and budgets live.

    `t2s evolve` measures its rounds here too, so `t2s eval` after an evolve run reuses the
    columns it already has (the starting skill, each round's result).
    """
    key = _digest([str(Path(suite.path).resolve()), [t.id for t in tasks], model.name,
                   config.turns, config.tokens, config.max_tokens])
    return Path(config.runs_dir) / "eval-columns" / key


def agent_budget(config):
    from t2s.agent import AgentBudget

    return AgentBudget(turns=config.turns, tokens=config.tokens, max_tokens=config.max_tokens)


def resolve_ablation_run(repo, runs_dir: Path, name: str) -> str:
    """A run with a result branch, or an evolve run (then its last round that changed the skill)."""
    from t2s.repo import result_branch_name

    if result_branch_name(name) in repo.branches(result_branch_name(name)):
        return name
    state_path = Path(runs_dir) / name / "evolve.json"
    if state_path.is_file():
        from t2s.evolve import load_state

        rounds = [r for r in load_state(state_path.parent).rounds
                  if r.result_commit and r.result_commit != r.base_commit]
        if rounds:
            return rounds[-1].run_id
        raise RunError(f"evolve run {name} has no round that changed the skill: nothing to ablate")
    raise RunError(
        f"no run {name!r}: give a run id with a result branch (t2s/<run>/result) "
        f"or an evolve run under {runs_dir}"
    )


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
