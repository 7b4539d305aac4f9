"""What an analyst reads: the skill in brief and the trajectory without the noise.

The agent's raw conversation repeats the system prompt and carries whole workbook dumps; an
analyst needs the instruction, each step's thought, call and a short observation, and the
outcome. Long logs keep their first and last steps, which is where plans are made and where
failures show.
"""

from __future__ import annotations

import json

from t2s.skill import SKILL_FILE, Skill
from t2s.trajectory import Trajectory

THOUGHT_CHARS = 240
ARGS_CHARS = 500
OBSERVATION_CHARS = 240
LOG_CHARS = 5000
MISMATCHES_SHOWN = 8


def skill_text(skill: Skill) -> str:
    """SKILL.md in full, then the names of its reference files (the agent had to open them)."""
    references = skill.references()
    listed = "\n".join(f"- {path}" for path in references) or "(none)"
    skill_md = skill.files[SKILL_FILE].rstrip()
    return f"=== {SKILL_FILE} ===\n{skill_md}\n=== reference files ===\n{listed}"


def trajectory_text(trajectory: Trajectory, max_chars: int = LOG_CHARS) -> str:
    """The cleaned log: instruction, numbered steps, outcome; at most about `max_chars`."""
    head = f"Instruction: {trajectory.instruction.strip()}"
    steps = [_step_text(index, step) for index, step in enumerate(trajectory.steps, 1)]
    outcome = outcome_text(trajectory)
    budget = max_chars - len(head) - len(outcome)
    shown = _keep_ends(steps, budget)
    stopped = f", stopped by {trajectory.stopped}" if trajectory.stopped else ""
    body = "\n".join(shown) if shown else "(the agent took no steps)"
    return f"{head}\nAgent steps ({len(steps)}{stopped}):\n{body}\n{outcome}"


def outcome_text(trajectory: Trajectory) -> str:
    lines = [
        f"Outcome: {trajectory.label}, score {trajectory.score:.2f}"
        + (f" ({trajectory.error})" if trajectory.error else "")
    ]
    if trajectory.mismatches:
        shown = trajectory.mismatches[:MISMATCHES_SHOWN]
        lines.append(
            "Wrong cells: "
            + "; ".join(
                f"{m.get('sheet', '')}!{m.get('cell', '')} expected {m.get('expected')!r} "
                f"got {m.get('got')!r}"
                for m in shown
            )
            + (
                f" (+{len(trajectory.mismatches) - len(shown)} more)"
                if len(trajectory.mismatches) > len(shown)
                else ""
            )
        )
    return "\n".join(lines)


def _step_text(index: int, step) -> str:
    thought = _cut(" ".join(step.thought.split()), THOUGHT_CHARS)
    if not step.tool:
        return f"{index}. (invalid reply: {_cut(step.error, OBSERVATION_CHARS)})"
    args = _cut(json.dumps(step.args, ensure_ascii=False), ARGS_CHARS)
    if step.ok:
        result = _cut(" ".join(step.observation.split()), OBSERVATION_CHARS)
    else:
        result = f"FAILED: {_cut(step.error, OBSERVATION_CHARS)}"
    section = f" [section: {step.section}]" if step.section else ""
    return f"{index}. thought: {thought}{section}\n   call: {step.tool} {args}\n   result: {result}"


def _keep_ends(steps: list[str], budget: int) -> list[str]:
    """The first and last steps that fit in `budget` characters, with a marker between."""
    if sum(len(step) + 1 for step in steps) <= budget:
        return steps
    front: list[str] = []
    back: list[str] = []
    used = 0
    low, high = 0, len(steps) - 1
    take_front = True
    while low <= high:
        step = steps[low] if take_front else steps[high]
        if used + len(step) + 1 > budget:
            break
        used += len(step) + 1
        if take_front:
            front.append(step)
            low += 1
        else:
            back.insert(0, step)
            high -= 1
        take_front = not take_front
    skipped = high - low + 1
    return front + ([f"[... {skipped} steps left out ...]"] if skipped > 0 else []) + back


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
