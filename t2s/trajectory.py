"""The record of one rollout: what the agent saw, did and scored (DESIGN section 3)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from t2s.errors import RunError
from t2s.fsutil import atomic_write_json, read_json

SUCCESS = "success"
FAILURE = "failure"


@dataclass
class Step:
    """One turn of a tool loop: the model's call and what came back."""

    turn: int
    thought: str
    section: str  # SKILL.md section the model said guided it; "" for none
    tool: str  # "" when the reply was not a valid step
    args: dict
    observation: str
    ok: bool
    seconds: float  # time spent in the tool
    error: str = ""  # why the step failed, in one line

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Step:
        return cls(**_known(cls, data))


@dataclass
class Trajectory:
    run_id: str
    task_id: str
    suite: str = ""
    case: str = ""  # the test case the agent worked on
    skill_ref: str = ""
    skill_commit: str = ""
    model: str = ""
    instruction: str = ""
    messages: list[dict] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    output_path: str = ""  # the agent's own workbook (of `case`)
    outputs: dict[str, str] = field(default_factory=dict)  # case name -> output workbook
    score: float = 0.0  # soft: share of test cases passed
    hard: bool = False  # all test cases passed
    label: str = FAILURE
    judge: str = ""  # what evaluated formulas before checking
    mismatches: list[dict] = field(default_factory=list)  # {case, sheet, cell, expected, got}
    references_opened: list[str] = field(default_factory=list)
    sections_cited: list[str] = field(default_factory=list)  # real SKILL.md sections, in order
    unknown_sections: list[str] = field(default_factory=list)  # cited but not in SKILL.md
    replay_notes: dict[str, list[str]] = field(default_factory=dict)  # case -> failed replays
    tokens: dict[str, int] = field(
        default_factory=lambda: {"prompt": 0, "completion": 0, "prompt_eval": 0}
    )
    timings: dict[str, float] = field(
        default_factory=lambda: {"total": 0.0, "model": 0.0, "tools": 0.0, "check": 0.0}
    )
    turns: int = 0
    stopped: str = ""  # finish | turns | tokens | error
    error: str = ""  # why the rollout could not complete, if it could not

    @property
    def solved(self) -> bool:
        return self.label == SUCCESS

    def to_dict(self) -> dict:
        data = asdict(self)
        data["steps"] = [step.to_dict() for step in self.steps]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Trajectory:
        values = _known(cls, data)
        values["steps"] = [Step.from_dict(step) for step in data.get("steps", [])]
        return cls(**values)

    def save(self, path: Path | str) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path | str) -> Trajectory:
        try:
            data = read_json(path)
            return cls.from_dict(data)
        except FileNotFoundError:
            raise RunError(f"trajectory {path} does not exist: run `t2s rollout` first") from None
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise RunError(
                f"trajectory {path} is not a valid record ({error}): delete it and run again"
            ) from None


def _known(cls, data: Any) -> dict:
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    return {key: value for key, value in data.items() if key in names}
