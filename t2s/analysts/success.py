"""The success analyst: one schema-constrained call per successful trajectory.

One call rather than two: the reply is a single JSON object whose keys come in the order the
model should think in, `solution_path` (the lean path, without detours), then `lessons` (at
most 3, general), then the patch itself (`reasoning`, `edits`). Under a grammar the model
writes them in that order, so the patch is conditioned on the lessons it just wrote, and the
whole analysis costs one prompt evaluation.
"""

from __future__ import annotations

import time

from t2s.analysts.digest import skill_text, trajectory_text
from t2s.analysts.records import MALFORMED, MODEL_FAILED, AnalysisJob, AnalysisRecord
from t2s.analysts.vetting import vet_patch
from t2s.errors import ModelError
from t2s.models.base import ChatOptions, Model
from t2s.patch import MAX_LESSONS, patch_schema
from t2s.skill import Skill
from t2s.trajectory import Trajectory

EDIT_HELP = """\
Each edit is one object {"op", "file", "section", "anchor", "target", "content"}; set the
fields an op does not use to "". file is "SKILL.md" or "references/<name>.md".
- append_to_section: section (an existing heading title), content (lines to add at its end)
- insert_after / insert_before: anchor (an exact existing line), content
- replace_in_section: section, target (exact existing text in it), content (its replacement)
- add_section: section (a new heading title), content (its body)
- delete_section: section
- create_file: file (references/<name>.md), content; SKILL.md must then link to it
- delete_file: file
Prefer one append_to_section or insert_after on the section the lesson belongs to. Keep
edits short and general; do not repeat what the skill already says."""

SYSTEM = f"""\
You improve a skill: the guidance a spreadsheet agent reads before it works. You are shown
the skill and one trajectory in which the agent solved its task. Reply with one JSON object:
- solution_path: the lean solution, the few steps that mattered, in order, without detours.
- lessons: at most {MAX_LESSONS} short, general lessons that would help on other spreadsheet
  tasks too. Never quote values from this task's data or answer.
- reasoning: why the skill should teach these lessons, in two or three sentences.
- edits: minimal edits to the skill that teach the lessons.
{EDIT_HELP}"""


def success_schema() -> dict:
    """The reply schema: the lean path and lessons first, then the patch's own fields."""
    return patch_reply_schema("solution_path")


def patch_reply_schema(first_field: str) -> dict:
    """A patch reply led by one free-text field (`first_field`), so the model writes its
    account before the lessons and edits that follow from it."""
    patch = grammar_patch_properties()
    return {
        "type": "object",
        "additionalProperties": False,
        "required": [first_field, "lessons", "reasoning", "edits"],
        "properties": {
            first_field: {"type": "string"},
            "lessons": patch["lessons"],
            "reasoning": patch["reasoning"],
            "edits": patch["edits"],
        },
    }


def grammar_patch_properties() -> dict:
    """PATCH_SCHEMA's properties without string length bounds, for decoding.

    llama.cpp turns each bounded string into nested rules that make sampling slow (and long
    bounds are refused outright); the reply's token budget bounds the strings instead, and
    `Patch.from_dict` still enforces the limits on what comes back.
    """
    properties = patch_schema()["properties"]
    _drop_string_bounds(properties)
    return properties


def _drop_string_bounds(schema) -> None:
    if isinstance(schema, dict):
        if schema.get("type") == "string":
            schema.pop("maxLength", None)
        for value in schema.values():
            _drop_string_bounds(value)
    elif isinstance(schema, list):
        for value in schema:
            _drop_string_bounds(value)


def success_messages(skill: Skill, trajectory: Trajectory) -> list[dict]:
    user = (
        f"{skill_text(skill)}\n\n=== the successful trajectory ===\n{trajectory_text(trajectory)}"
        "\n\nWrite the solution path, the lessons and the patch."
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def analyze_success(model: Model, job: AnalysisJob) -> AnalysisRecord:
    trajectory = Trajectory.load(job.trajectory_path)
    record = AnalysisRecord.start(job, trajectory.label, model.name)
    skill = Skill(job.skill_files)
    started = time.monotonic()
    options = ChatOptions(schema=success_schema(), max_tokens=job.max_tokens)
    try:
        reply = model.chat(success_messages(skill, trajectory), options)
        data = reply.json()
    except ModelError as error:
        record.seconds = time.monotonic() - started
        return record.fail(MODEL_FAILED, str(error))
    record.seconds = time.monotonic() - started
    record.turns = 1
    record.tokens = {
        "prompt": reply.usage.prompt_tokens,
        "completion": reply.usage.completion_tokens,
        "prompt_eval": reply.usage.prompt_eval_tokens,
    }
    if not isinstance(data, dict):
        return record.reject(MALFORMED, f"the reply is a JSON {type(data).__name__}, not an object")
    solution_path = data.pop("solution_path", "")
    record.solution_path = solution_path.strip() if isinstance(solution_path, str) else ""
    return vet_patch(record, data, job.task, job.skill_files)
