"""Records passed between the analysis stage's parent and its workers, and stored per trajectory.

`analysis/<task>.json` holds one `AnalysisRecord`. Its `status` is final once written:

- ``branch``: the patch was applied and is the branch `t2s/<run>/patch/<n>`;
- ``rejected``: the analyst's patch cannot be used (`reasons` say why);
- ``dropped``: the error analyst did not reach a fix that passes the checker (the quality gate);
- ``error``: the analysis itself broke (model unreachable, reply never finished, worker
  crashed or timed out); `t2s analyze --retry-errors` runs these again.

A worker returns a record with status ``proposed`` (a patch that passed the analyst's own
checks); only the parent turns it into ``branch`` or ``rejected``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from t2s.errors import RunError
from t2s.fsutil import atomic_write_json, read_json
from t2s.tasks import Task

SUCCESS_ANALYST = "success"
ERROR_ANALYST = "error"

PROPOSED = "proposed"
BRANCH = "branch"
REJECTED = "rejected"
DROPPED = "dropped"
ERROR = "error"

# Reason kinds, counted in the summary.
MALFORMED = "malformed-patch"
NO_LESSON = "no-lesson"
GOLD_LEAK = "gold-leak"
NOT_APPLICABLE = "not-applicable"
NOT_FIXED = "not-fixed"
NOT_SUBMITTED = "fixed-not-submitted"
MODEL_FAILED = "model-failed"
WORKER_FAILED = "worker-failed"
REPOSITORY = "repository"
BAD_INPUT = "bad-input"


@dataclass
class AnalysisJob:
    """One trajectory for one analyst; everything a worker needs, nothing it must look up."""

    run_id: str
    run_dir: str
    n: int  # the patch number: stable per task, so reruns name the same branch
    task: Task
    trajectory: str  # path of the trajectory record, relative to run_dir
    analyst: str
    base_commit: str
    skill_files: dict[str, str]
    workdir: str  # scratch space of the error analyst (never holds the gold workbook)
    turns: int
    max_tokens: int  # of one model reply

    @property
    def trajectory_path(self) -> Path:
        return Path(self.run_dir) / self.trajectory


@dataclass
class Reason:
    kind: str
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AnalysisRecord:
    task_id: str
    trajectory: str  # path of the trajectory record, relative to the run directory
    label: str  # the trajectory's outcome: success | failure
    analyst: str
    model: str
    status: str
    n: int = 0
    base_commit: str = ""
    reasons: list[Reason] = field(default_factory=list)
    fixed: bool = False  # the error analyst reached an output that passes the checker
    solution_path: str = ""  # the success analyst's lean path
    diagnosis: str = ""  # the error analyst's account of what went wrong and its fix
    patch: dict | None = None  # as the analyst proposed it
    applied: dict | None = None  # ApplyResult.to_dict() of the patch on its base skill
    branch: str = ""
    commit: str = ""
    turns: int = 0
    tokens: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    steps: list[dict] = field(default_factory=list)  # the error analyst's own steps, shortened

    @classmethod
    def start(cls, job: AnalysisJob, label: str, model: str) -> AnalysisRecord:
        return cls(
            task_id=job.task.id,
            trajectory=job.trajectory,
            label=label,
            analyst=job.analyst,
            model=model,
            status=ERROR,
            n=job.n,
            base_commit=job.base_commit,
        )

    def fail(self, kind: str, detail: str) -> AnalysisRecord:
        self.status = ERROR
        self.reasons.append(Reason(kind, detail))
        return self

    @property
    def lessons(self) -> list[str]:
        return list((self.patch or {}).get("lessons") or [])

    def reject(self, kind: str, detail: str) -> AnalysisRecord:
        self.status = REJECTED
        self.reasons.append(Reason(kind, detail))
        return self

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["reasons"] = [reason.to_dict() for reason in self.reasons]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> AnalysisRecord:
        if not isinstance(data, dict):
            raise TypeError("expected a JSON object")
        names = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in names}
        values["reasons"] = [Reason(**reason) for reason in data.get("reasons", [])]
        return cls(**values)

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> AnalysisRecord:
        try:
            return cls.from_dict(read_json(path))
        except (ValueError, TypeError, KeyError) as error:
            raise RunError(
                f"analysis record {path} is unreadable ({error}): delete it and run again"
            ) from None
