"""The checks every analyst's patch passes in code before it may become a branch."""

from __future__ import annotations

from t2s.analysts.goldguard import gold_markers
from t2s.analysts.records import (
    GOLD_LEAK,
    MALFORMED,
    NO_LESSON,
    PROPOSED,
    AnalysisRecord,
)
from t2s.errors import PatchError
from t2s.patch import Patch
from t2s.tasks import Task


def vet_patch(
    record: AnalysisRecord, data: dict, task: Task, skill_files: dict[str, str]
) -> AnalysisRecord:
    """Mark `record` proposed with `data` as its patch, or rejected with the reason.

    The patch must be well formed, carry at least one lesson, and neither its lessons nor the
    text its edits add may quote the task's gold values (see goldguard).
    """
    record.patch = data
    try:
        patch = Patch.from_dict(data)
    except PatchError as error:
        return record.reject(MALFORMED, str(error))
    lessons = [lesson for lesson in patch.lessons if lesson]
    if not lessons:
        return record.reject(NO_LESSON, "the analyst wrote no lesson")
    record.patch = {**patch.to_dict(), "lessons": lessons}
    markers = gold_markers(task, skill_files.values())
    added = [*lessons, *(text for edit in patch.edits for text in (edit.section, edit.content))]
    leaked = sorted({value for text in added for value in markers.leaks(text)})
    if leaked:
        shown = ", ".join(repr(value) for value in leaked[:5])
        return record.reject(GOLD_LEAK, f"lessons or edits quote the task's answer: {shown}")
    record.status = PROPOSED
    return record
