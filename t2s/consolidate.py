"""Stage 3: hierarchical consolidation of a run's patches, as a tree of real git merge commits.

The patches of run R are branches `t2s/R/patch/<n>`, one commit each on the same base S0. They
are merged in groups of at most B (in patch-number order), level after level, until one commit
remains: ceil(log_B P) levels. Node k of level L is the branch `t2s/R/merge/L/k`: ONE commit
whose parents are every branch it merged, so `git log --graph` draws the tree and `git blame`
reaches the patch commits through the merges. The last node is also `t2s/R/result`; `main`
moves only through `accept`. A run with a single patch gets one node with that patch as its
only parent (not a merge commit, but it goes through the same rules and guardrails and says
what it kept).

At each node:

1. **Rules (git + t2s.mergedriver).** The group is folded pairwise, in rounds (1+2, 3+4, ...,
   then the results pairwise; left stays "ours"), with `git merge-tree` (ort), which runs the
   skill merge driver for every file both sides changed (started as `python -S <file>`, see
   `fast_driver_config`). The pairs of all nodes of a level run on `workers` threads. The driver
   gets the group's support map (`T2S_SUPPORT_FILE`), breaks ties for ours
   (`T2S_MERGE_TIES=ours`, so intermediate trees never hold markers) and logs every tie
   (`T2S_CONFLICT_LOG`): those are the open conflicts handed to the operator. The intermediate
   commits of the fold are unreferenced scratch objects. The rules result is then shaped in code: at the last level,
   lessons below `min_support` are dropped or moved to `references/rare-lessons.md`; a new
   reference nobody links to and a link to a missing file are dropped; files over the
   validator's line limits lose their least supported lessons; a file that still fails the
   validator goes back to its S0 version.
2. **Operator (optional).** The model sees S0 and the group's edits, each with its support and
   the patches behind it, plus the open conflicts, and returns one patch against S0 under
   PATCH_SCHEMA. At intermediate levels it is asked to merge duplicates and resolve conflicts
   but keep rare lessons (support is counted over the whole run, so a lesson rare in one group
   may recur in another); at the last level it applies the prevalence policy.
3. **Guardrails.** Edits naming files or sections that do not exist are refused; an edit that
   touches the same lines of a file as an earlier one is withheld; the result must pass
   `validate_skill`. The operator gets `repair_rounds` more tries with the reasons; if no try
   yields a valid patch with at least one applied edit (or the model fails or returns
   nonsense), the node falls back to the rules result and its commit says so
   (`T2S-Fallback`). Every tree is checked for conflict markers before it is committed.

**Support.** A block of guidance (a list item, a paragraph or a whole new section; see
t2s.mergedriver) that a patch adds or replaces has support 1 from that patch; a deletion counts
for the deleted text. A node's support map is the sum of its parents' maps, keyed by the
block's normalised text, plus estimates for text the operator wrote (the summed support of the
group's lessons it resembles). Maps are stored by commit sha in `<run dir>/merge/support/`, so
later levels and resumed runs read them; a missing map is rebuilt from the parents.

**Resuming.** A node whose ref exists with exactly the expected parents (and built for the same
role: last level or not) is reused, whatever operator built it; a node gets
its ref only once its commit exists; at the end, refs under `t2s/R/merge/` that are not part of
the finished tree are deleted in the same transaction that sets `t2s/R/result`. Everything runs
under `repo.lock()`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2s import mergedriver
from t2s.errors import ModelError, PatchError, RepoError, RunError, SkillError
from t2s.fsutil import atomic_write_json, read_json
from t2s.mergedriver import (
    CONFLICT_LOG_ENV,
    SUPPORT_ENV,
    TIES_ENV,
    diff_hunks,
    hunk_blocks,
    normalize,
    split_lines,
    write_support,
)
from t2s.models.base import ChatOptions
from t2s.patch import Edit, Patch, apply_patch, patch_schema
from t2s.progress import Progress
from t2s.repo import MAIN, MERGE_DRIVER, ZERO_SHA, SkillsRepo, format_trailers, result_branch_name
from t2s.skill import (
    REFERENCE_LINE_LIMIT,
    SKILL_FILE,
    SKILL_LINE_LIMIT,
    Skill,
    line_count,
    validate_skill,
)

DEFAULT_BATCH = 32
DEFAULT_MIN_SUPPORT = 2
DEFAULT_REPAIR_ROUNDS = 2
OPERATOR_MAX_TOKENS = 1024
SINGLETON_POLICIES = ("drop", "reference")
RARE_LESSONS_FILE = "references/rare-lessons.md"
RARE_LESSONS_HEADER = (
    "# Rare lessons\n\n"
    "Lessons a single trajectory taught. They are not yet general principles of this skill;\n"
    "check whether one fits your task before relying on it.\n\n"
)
RARE_LESSONS_LINK = (
    "\nLessons seen only once are kept in [rare lessons](references/rare-lessons.md).\n"
)
LISTED_LESSONS = 40  # per list in a commit message; the full lists are in the run directory
SHOWN_EDITS = 30  # edits the operator sees, best supported first
SHOWN_CHARS = 400
SCRATCH_MESSAGE = "t2s scratch merge (unreferenced; replaced by one merge commit)\n"
_PATCH_BRANCH = re.compile(r"^t2s/(?P<run>.+)/patch/(?P<n>\d+)$")
_MARKER_LINE = re.compile(r"^(?:<{7}|>{7}|\|{7})(?: |$)", re.MULTILINE)
_LIST_MARKER = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")


# -- records --------------------------------------------------------------------------------


@dataclass
class Lesson:
    """A block of guidance, how many patches proposed it and which ones."""

    key: str
    text: str
    support: int = 1
    patches: list[int] = field(default_factory=list)

    @property
    def title(self) -> str:
        """One line for commit messages."""
        for line in self.text.splitlines():
            line = _LIST_MARKER.sub("", line).strip().lstrip("#").strip()
            if line:
                line = line if len(line) <= 90 else line[:87] + "..."
                return f"(deletes) {line}" if self.key.startswith("del:") else line
        return "(blank lines)"

    def describe(self) -> str:
        numbers = ", ".join(str(n) for n in self.patches[:12])
        if len(self.patches) > 12:
            numbers += f" and {len(self.patches) - 12} more"
        behind = f"patch{'es' if len(self.patches) != 1 else ''} {numbers}" if self.patches \
            else "the operator's wording"
        return f"[{self.support}] {self.title} ({behind})"

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "text": self.text, "support": self.support,
                "patches": list(self.patches)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lesson:
        return cls(data["key"], data["text"], int(data["support"]), list(data["patches"]))


@dataclass
class NodeRecord:
    """What one node of the tree holds; stored as `<run dir>/merge/support/<sha>.json`."""

    sha: str
    level: int
    index: int
    parents: list[str]
    patches: list[int]  # every patch under this node
    lessons: dict[str, Lesson]  # the summed support map of the parents (+ operator wording)
    kept: list[str]  # keys of lessons present in the node's skill
    moved: list[str] = field(default_factory=list)  # keys moved to the rare-lessons reference
    dropped: dict[str, str] = field(default_factory=dict)  # key -> why
    operator: str = ""  # model name, or "" for rules only
    fallback: str = ""  # why the operator's answer was not used
    notes: list[str] = field(default_factory=list)
    final: bool = False  # built as the last level (prevalence applied)
    reused: bool = False

    @property
    def support(self) -> int:
        return sum(self.lessons[key].support for key in self.kept if key in self.lessons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sha": self.sha, "level": self.level, "index": self.index,
            "parents": list(self.parents), "patches": list(self.patches),
            "lessons": {key: lesson.to_dict() for key, lesson in self.lessons.items()},
            "kept": list(self.kept), "moved": list(self.moved), "dropped": dict(self.dropped),
            "operator": self.operator, "fallback": self.fallback, "notes": list(self.notes),
            "final": self.final,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeRecord:
        return cls(
            data["sha"], int(data["level"]), int(data["index"]), list(data["parents"]),
            list(data["patches"]),
            {key: Lesson.from_dict(value) for key, value in data["lessons"].items()},
            list(data["kept"]), list(data.get("moved", [])), dict(data.get("dropped", {})),
            data.get("operator", ""), data.get("fallback", ""), list(data.get("notes", [])),
            bool(data.get("final", False)),
        )


@dataclass
class ConsolidationResult:
    run_id: str
    base: str
    result_sha: str
    patches: int
    levels: int
    nodes: list[NodeRecord]
    kept: list[Lesson]
    dropped: list[tuple[Lesson, str]]
    moved: list[Lesson]
    fallbacks: list[str]  # "level L node k: why"
    reused: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def result_ref(self) -> str:
        return result_branch_name(self.run_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "base": self.base, "result_sha": self.result_sha,
            "result_ref": self.result_ref, "patches": self.patches, "levels": self.levels,
            "nodes": [{"level": n.level, "index": n.index, "sha": n.sha, "parents": len(n.parents),
                       "patches": len(n.patches), "fallback": n.fallback, "reused": n.reused}
                      for n in self.nodes],
            "kept": [lesson.to_dict() for lesson in self.kept],
            "dropped": [{**lesson.to_dict(), "reason": why} for lesson, why in self.dropped],
            "moved": [lesson.to_dict() for lesson in self.moved],
            "fallbacks": list(self.fallbacks), "reused": self.reused, "notes": list(self.notes),
        }


@dataclass
class GuardResult:
    """An operator patch after the guardrails: the skill it yields and what was held back."""

    skill: Skill
    applied: list[Edit]
    refused: list[tuple[Edit, str]]
    violations: list[str]

    @property
    def ok(self) -> bool:
        return bool(self.applied) and not self.violations

    def problems(self) -> list[str]:
        found = [f"edit {edit.describe()}: {why}" for edit, why in self.refused]
        found += [f"the result is not a valid skill: {v}" for v in self.violations]
        if not self.applied and not found:
            found.append("the patch has no edit that could be applied")
        return found


class OperatorFailed(Exception):
    """The merge operator gave no usable patch; the message says why."""


# -- support: lessons of a skill against the base ----------------------------------------------


@dataclass
class _Change:
    """One hunk of one file against the base, cut into blocks that can be kept or dropped."""

    file: str
    start: int
    end: int
    blocks: list[tuple[str, str]]  # (key, text)
    kept: list[bool]

    @property
    def deletion(self) -> bool:
        return bool(self.blocks) and self.blocks[0][0].startswith("del:")

    @property
    def insertion(self) -> bool:
        return self.start == self.end


def skill_changes(base: Skill, skill: Skill) -> list[_Change]:
    """Every hunk of every file `skill` changed against `base`, in file and line order."""
    changes = []
    for path in sorted(set(base.files) | set(skill.files)):
        old, new = base.files.get(path, ""), skill.files.get(path, "")
        if old == new:
            continue
        base_lines = split_lines(old)
        for start, end, new_lines in diff_hunks(base_lines, split_lines(new)):
            blocks = hunk_blocks(base_lines[start:end], new_lines)
            if blocks:
                changes.append(_Change(path, start, end, blocks, [True] * len(blocks)))
    return changes


def lessons_of(base: Skill, skill: Skill, patch_number: int | None = None) -> dict[str, Lesson]:
    """The lessons `skill` adds to `base`, support 1 each (one patch's evidence)."""
    found: dict[str, Lesson] = {}
    for change in skill_changes(base, skill):
        for key, text in change.blocks:
            if key not in found:
                patches = [patch_number] if patch_number is not None else []
                found[key] = Lesson(key, text, 1, patches)
    return found


def add_lessons(total: dict[str, Lesson], more: dict[str, Lesson]) -> None:
    """Add `more`'s support into `total` (in place)."""
    for key, lesson in more.items():
        mine = total.get(key)
        if mine is None:
            total[key] = Lesson(key, lesson.text, lesson.support, list(lesson.patches))
        else:
            mine.support += lesson.support
            mine.patches = sorted(set(mine.patches) | set(lesson.patches))


class _Draft:
    """A skill seen as base + blocks, where single blocks can be dropped and the rest re-rendered."""

    def __init__(self, base: Skill, skill: Skill):
        self.base = base
        self.paths = sorted(set(base.files) | set(skill.files))
        self.changes = skill_changes(base, skill)

    def blocks(self):
        for change in self.changes:
            for index, (key, text) in enumerate(change.blocks):
                if change.kept[index]:
                    yield change, index, key, text

    def render(self) -> Skill:
        by_file: dict[str, list[_Change]] = {}
        for change in self.changes:
            by_file.setdefault(change.file, []).append(change)
        files = {}
        for path in self.paths:
            base_text = self.base.files.get(path)
            if path not in by_file:
                if base_text is not None:
                    files[path] = base_text
                continue
            base_lines = split_lines(base_text or "")
            out: list[str] = []
            position = 0
            for change in by_file[path]:
                out.extend(base_lines[position : change.start])
                if change.deletion:
                    if not change.kept[0]:
                        out.extend(base_lines[change.start : change.end])
                elif any(change.kept):
                    out.extend(text for (_, text), kept in zip(change.blocks, change.kept) if kept)
                else:
                    out.extend(base_lines[change.start : change.end])
                position = change.end
            out.extend(base_lines[position:])
            text = "".join(out)
            if text or base_text == "":  # a file with nothing left was deleted, or never kept
                files[path] = text
        return Skill(files)

    def lines_freed(self, change: _Change, index: int) -> int:
        """How many lines dropping this block removes (reverting a replacement adds some back)."""
        freed = line_count(change.blocks[index][1])
        if change.deletion:
            return -(change.end - change.start)
        if sum(change.kept) == 1:
            freed -= change.end - change.start
        return freed


# -- shaping the rules result -----------------------------------------------------------------


@dataclass
class _Shaped:
    skill: Skill
    dropped: dict[str, str]
    moved: list[str]
    notes: list[str]


def shape_rules_result(
    base: Skill,
    skill: Skill,
    lessons: dict[str, Lesson],
    *,
    final: bool,
    min_support: int,
    singletons: str,
) -> _Shaped:
    """Prevalence (last level only), link pairing, line limits and validation, all in code."""
    draft = _Draft(base, skill)
    dropped: dict[str, str] = {}
    notes: list[str] = []

    # merged wording (two same-titled sections made one) counts the support of what it holds
    estimated = _lessons_present(base, skill, lessons)

    def support(key: str) -> int:
        known = lessons.get(key) or estimated.get(key)
        return known.support if known is not None else 1

    to_move: list[tuple[str, str]] = []
    if final and min_support > 1:
        for change, index, key, text in list(draft.blocks()):
            if support(key) >= min_support:
                continue
            change.kept[index] = False
            movable = change.file == SKILL_FILE and change.insertion and not change.deletion
            if singletons == "reference" and movable:
                to_move.append((key, text))
            else:
                dropped[key] = f"support {support(key)} is below {min_support}"
    _pair_links(draft, dropped)
    _trim_to_limits(draft, dropped, support)
    shaped = draft.render()
    moved: list[str] = []
    if to_move:
        shaped, moved, too_many = _move_to_reference(shaped, to_move)
        for key in too_many:
            dropped[key] = f"{RARE_LESSONS_FILE} is full"
    shaped = _validated(base, shaped, dropped, notes)
    return _Shaped(shaped, dropped, moved, notes)


def _pair_links(draft: _Draft, dropped: dict[str, str]) -> None:
    """Drop new references nothing links to, and lessons linking to files that are gone."""
    for _round in range(5):
        skill = draft.render()
        changed = False
        linked = {link.path for link in skill.links(SKILL_FILE)}
        for path in skill.files:
            if path not in draft.base.files and path.startswith("references/") and path not in linked:
                for change, index, key, _text in list(draft.blocks()):
                    if change.file == path:
                        change.kept[index] = False
                        dropped[key] = f"{path} is no longer linked from SKILL.md"
                        changed = True
        for link in skill.links():
            if link.path in skill.files:
                continue
            if link.path in draft.base.files:  # a deleted file something still links to: keep it
                for change, index, key, _text in list(draft.blocks()):
                    if change.file == link.path and change.deletion:
                        change.kept[index] = False
                        dropped[key] = f"{link.file} still links to {link.path}"
                        changed = True
                continue
            for change, index, key, text in list(draft.blocks()):
                if change.file == link.file and link.target in text:
                    change.kept[index] = False
                    dropped[key] = f"links to {link.path}, which is not part of the result"
                    changed = True
        if not changed:
            return


def _trim_to_limits(draft: _Draft, dropped: dict[str, str], support) -> None:
    skill = draft.render()
    for path, text in skill.files.items():
        limit = SKILL_LINE_LIMIT if path == SKILL_FILE else REFERENCE_LINE_LIMIT \
            if path.startswith("references/") else None
        count = line_count(text)
        if limit is None or count < limit:
            continue
        candidates = [
            (support(key), -change.start, -index, change, index, key)
            for change, index, key, _text in draft.blocks()
            if change.file == path and not change.deletion
        ]
        candidates.sort(key=lambda item: item[:3])
        for _s, _start, _i, change, index, key in candidates:
            if count < limit:
                break
            count -= draft.lines_freed(change, index)
            change.kept[index] = False
            dropped[key] = f"{path} would reach {limit} lines; least supported lessons go first"


def _move_to_reference(skill: Skill, to_move: list[tuple[str, str]]):
    text = skill.files.get(RARE_LESSONS_FILE) or RARE_LESSONS_HEADER
    if not text.endswith("\n"):
        text += "\n"
    moved, too_many = [], []
    present = normalize(text)
    for key, block in to_move:
        if normalize(block) and normalize(block) in present:
            moved.append(key)
            continue
        candidate = text + block.rstrip("\n") + "\n"
        if line_count(candidate) >= REFERENCE_LINE_LIMIT:
            too_many.append(key)
            continue
        text = candidate
        moved.append(key)
    if not moved:
        return skill, moved, too_many
    skill = skill.with_file(RARE_LESSONS_FILE, text)
    if RARE_LESSONS_FILE not in {link.path for link in skill.links(SKILL_FILE)}:
        main_text = skill.files[SKILL_FILE]
        skill = skill.with_file(SKILL_FILE, main_text.rstrip("\n") + "\n" + RARE_LESSONS_LINK)
    return skill, moved, too_many


def _new_violations(base: Skill, skill: Skill) -> list:
    known = {(v.file, v.rule, v.message) for v in validate_skill(base, base=base)}
    return [v for v in validate_skill(skill, base=base) if (v.file, v.rule, v.message) not in known]


def _validated(base: Skill, skill: Skill, dropped: dict[str, str], notes: list[str]) -> Skill:
    """Put each file that fails the validator back to its base version (or remove it if new)."""
    for _round in range(3):
        violations = _new_violations(base, skill)
        if not violations:
            return skill
        for violation in violations:
            path = violation.file
            if skill.files.get(path) == base.files.get(path):
                continue
            for lesson_key, _text in _blocks_of_file(base, skill, path):
                dropped.setdefault(lesson_key, f"{path} failed validation: {violation.message}")
            notes.append(f"{path} went back to its base version: {violation}")
            skill = skill.with_file(path, base.files[path]) if path in base.files \
                else skill.without_file(path)
    notes.append("the merged skill kept failing validation: the node keeps the base skill")
    for change in skill_changes(base, skill):
        for key, _text in change.blocks:
            dropped.setdefault(key, "the merged skill failed validation")
    return base


def _blocks_of_file(base: Skill, skill: Skill, path: str):
    for change in skill_changes(base, skill):
        if change.file == path:
            yield from change.blocks


def conflict_markers(skill: Skill) -> list[str]:
    """Files of `skill` holding a git conflict marker line."""
    return [path for path, text in sorted(skill.files.items()) if _MARKER_LINE.search(text)]


# -- guardrails for the operator's patch -------------------------------------------------------


def guard_patch(base: Skill, patch: Patch) -> GuardResult:
    """Apply an operator patch to `base` behind the guardrails (see the module docstring)."""
    refused: list[tuple[Edit, str]] = []
    accepted: list[Edit] = []
    spans: list[tuple[str, int, int, int]] = []  # file, start, end, accepted index
    created = {e.file: e.content for e in patch.edits if e.op == "create_file" and e.file}
    trial_files = dict(base.files)
    for path, content in created.items():
        if path not in base.files and path.startswith("references/"):
            trial_files[path] = content.strip("\n") + "\n"
    try:
        trial = Skill(trial_files)
    except SkillError:  # a created path the skill format refuses: judged edit by edit below
        trial = base
    for edit in patch.edits:
        path = edit.file or SKILL_FILE
        if edit.op != "create_file" and path not in base.files:
            refused.append((edit, f"names file {path}, which does not exist"))
            continue
        if edit.op == "create_file":
            if path in base.files:
                refused.append((edit, f"creates {path}, which already exists"))
                continue
            touched = [(path, 0, 0)]
        else:
            single = apply_patch(trial, Patch("", [], [edit]), base=trial)
            if single.refused:
                refused.append((edit, single.refused[0].reason))
                continue
            touched = [(c.file, c.start, c.end) for c in skill_changes(trial, single.skill)]
        clash = next(
            (
                (other, start, end)
                for file, start, end in touched
                for other_file, other_start, other_end, other in spans
                if file == other_file and _overlap(start, end, other_start, other_end)
            ),
            None,
        )
        if clash is not None:
            other, start, end = clash
            refused.append((edit, (
                f"withheld: it changes the same lines of {path} (lines {start + 1}-{max(end, start + 1)})"
                f" as the edit {accepted[other].describe()}")))
            continue
        spans.extend((file, start, end, len(accepted)) for file, start, end in touched)
        accepted.append(edit)
    result = apply_patch(base, Patch(patch.reasoning, list(patch.lessons), accepted), base=base)
    refused.extend((r.edit, r.reason) for r in result.refused)
    violations = [str(v) for v in _new_violations(base, result.skill)]
    violations += [f"{path}: conflict marker" for path in conflict_markers(result.skill)
                   if path not in conflict_markers(base)]
    applied = [] if result.rejected and result.skill == base else result.applied
    return GuardResult(result.skill, applied, refused, violations)


def _overlap(start: int, end: int, other_start: int, other_end: int) -> bool:
    """Whether two edits change the same base lines (two insertions at one point do not)."""
    if start == end and other_start == other_end:
        return False
    return start < other_end and other_start < end if start != end and other_start != other_end \
        else (other_start < start < other_end) or (start < other_start < end)


# -- the operator ------------------------------------------------------------------------------


OPERATOR_SYSTEM = """You are the merge operator of t2s. Several independent analysts each proposed \
edits to the same agent skill (BASE). You turn the edits of one group into ONE patch against \
BASE: merge duplicates into one edit, resolve conflicts, and state recurring lessons as general \
principles. Support = how many independent patches proposed an edit: higher support is stronger \
evidence of a general property. Edits must be minimal and targeted.

Reply with one JSON object {"reasoning": str, "lessons": [str], "edits": [edit]}. Each edit is \
{"op", "file", "section", "anchor", "target", "content"} (unused fields ""), op one of:
- insert_after / insert_before: "anchor" = an exact line of the file, "content" = new lines
- append_to_section: "section" = an existing heading title, "content" = new lines
- replace_in_section: "section", "target" = exact text in that section, "content" = replacement
- add_section: "section" = a new heading title, "content" = its body (added at the end)
- delete_section: "section"
- create_file: "file" = references/<name>.md, "content" (SKILL.md must link to it)
- delete_file: "file"
"file" is SKILL.md or references/<name>.md and must exist unless you create it."""


@dataclass
class _ShownEdit:
    lesson: Lesson
    file: str
    section: str
    kind: str  # insert | replace | delete
    old: str


def _section_at(skill: Skill, path: str, line: int) -> str:
    """The title of the innermost section holding 0-based `line` of `path` ("" for none)."""
    title = ""
    for section in skill.sections(path) if path.endswith(".md") else []:
        if section.start_line - 1 <= line <= section.end_line:
            title = section.title
    return title


def shown_edits(base: Skill, parents: list[Skill], lessons: dict[str, Lesson]) -> list[_ShownEdit]:
    """The group's distinct edits, best supported first, with where they apply in `base`."""
    seen: dict[str, _ShownEdit] = {}
    for skill in parents:
        for change in skill_changes(base, skill):
            base_lines = split_lines(base.files.get(change.file, ""))
            old = "".join(base_lines[change.start : change.end])
            kind = "delete" if change.deletion else "insert" if change.insertion else "replace"
            section = _section_at(base, change.file, change.start)
            for key, text in change.blocks:
                if key not in seen:
                    lesson = lessons.get(key) or Lesson(key, text)
                    seen[key] = _ShownEdit(lesson, change.file, section, kind, old)
    return sorted(seen.values(), key=lambda e: (-e.lesson.support, min(e.lesson.patches or [0])))


def _clip(text: str, limit: int = SHOWN_CHARS) -> str:
    text = text.strip("\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def operator_messages(
    base: Skill,
    edits: list[_ShownEdit],
    conflicts: list[dict],
    *,
    patches: int,
    final: bool,
    min_support: int,
    singletons: str,
) -> list[dict]:
    """The prompt of one node's merge operator."""
    parts = ["BASE skill, SKILL.md:", "```markdown", base.files.get(SKILL_FILE, "").rstrip(), "```"]
    references = base.references()
    if references:
        parts.append("BASE reference files: " + ", ".join(references))
    parts.append(f"\nPROPOSED EDITS ({len(edits)} distinct, from {patches} patches):")
    for number, edit in enumerate(edits[:SHOWN_EDITS], 1):
        lesson = edit.lesson
        where = f"{edit.file}" + (f", section \"{edit.section}\"" if edit.section else "")
        patches_text = ", ".join(str(n) for n in lesson.patches[:10]) or "-"
        parts.append(f"[{number}] support {lesson.support} (patches {patches_text}): "
                     f"{edit.kind} in {where}")
        if edit.kind in ("replace", "delete") and edit.old.strip():
            parts.append(f"    old: {_clip(edit.old, 200)}")
        if edit.kind != "delete":
            parts.append("    new: " + _clip(lesson.text).replace("\n", "\n         "))
    if len(edits) > SHOWN_EDITS:
        parts.append(f"(and {len(edits) - SHOWN_EDITS} more edits with lower support)")
    if conflicts:
        parts.append("\nOPEN CONFLICTS (equal support; the rules could not choose):")
        for number, conflict in enumerate(conflicts[:10], 1):
            parts.append(
                f"({number}) {conflict.get('path', SKILL_FILE)}: base {_clip(conflict['base'], 150)!r}"
                f" -> A {_clip(conflict['ours'], 200)!r} or B {_clip(conflict['theirs'], 200)!r}"
            )
    if final:
        rare = (f"drop lessons with support below {min_support}" if singletons == "drop" else
                f"move lessons with support below {min_support} into {RARE_LESSONS_FILE} "
                "(create it with a link from SKILL.md if it does not exist)")
        policy = f"Keep lessons with support {min_support} or more as general principles; {rare}."
    else:
        policy = ("This is not the last level: keep every distinct lesson, even rare ones (they "
                  "may recur in other groups), merging duplicates.")
    parts.append(
        "\nTASK: write ONE patch against BASE that merges duplicate edits into one, resolves the "
        f"conflicts in favour of the better supported or clearer edit, and uses at most 6 edits "
        "(one edit's content may hold several lines, e.g. several bullets for one section). "
        f"{policy} Target only files and sections that exist in BASE. List the lessons you kept."
    )
    return [
        {"role": "system", "content": OPERATOR_SYSTEM},
        {"role": "user", "content": "\n".join(parts)},
    ]


def operator_schema() -> dict:
    """PATCH_SCHEMA with at least one edit and a short reasoning, so a small model under the
    grammar cannot answer with nothing, nor spend its tokens before the edits."""
    schema = patch_schema()
    schema["properties"]["edits"]["minItems"] = 1
    schema["properties"]["reasoning"]["maxLength"] = 240
    return schema


def run_operator(
    model,
    base: Skill,
    messages: list[dict],
    *,
    repair_rounds: int = DEFAULT_REPAIR_ROUNDS,
    max_tokens: int = OPERATOR_MAX_TOKENS,
) -> tuple[GuardResult, Patch, list[str]]:
    """Ask the operator, guard its patch, and give it `repair_rounds` more tries; or raise."""
    notes: list[str] = []
    messages = list(messages)
    options = ChatOptions(schema=operator_schema(), max_tokens=max_tokens, temperature=0.0, seed=0)
    last_problem = ""
    for attempt in range(1 + repair_rounds):
        try:
            reply = model.chat(messages, options)
        except ModelError as error:
            raise OperatorFailed(f"the model failed: {error}") from None
        try:
            patch = Patch.from_dict(reply.json())
        except (ModelError, PatchError) as error:
            problems = [str(error)]
        else:
            guarded = guard_patch(base, patch)
            if guarded.ok:
                if guarded.refused:
                    notes += [f"guardrail: {e.describe()}: {why}" for e, why in guarded.refused]
                if attempt:
                    notes.append(f"the operator's patch passed after {attempt} repair round(s)")
                return guarded, patch, notes
            problems = guarded.problems()
        last_problem = problems[0]
        messages += [
            {"role": "assistant", "content": reply.text},
            {"role": "user", "content": (
                "Your patch was not accepted:\n" + "\n".join(f"- {p}" for p in problems[:8])
                + "\nReturn a corrected patch against BASE as one JSON object.")},
        ]
    raise OperatorFailed(f"no valid patch after {repair_rounds} repair round(s): {last_problem}")


# -- the tree ----------------------------------------------------------------------------------


@dataclass
class _Context:
    repo: SkillsRepo
    run_id: str
    base_sha: str
    base: Skill
    base_tree: str
    store: Path
    scratch: Path
    model: Any
    model_name: str
    min_support: int
    singletons: str
    repair_rounds: int
    max_tokens: int
    patch_numbers: dict[str, int]  # patch sha -> n
    records: dict[str, NodeRecord] = field(default_factory=dict)


def consolidate(
    repo: SkillsRepo,
    run_id: str,
    *,
    model=None,
    batch: int = DEFAULT_BATCH,
    min_support: int = DEFAULT_MIN_SUPPORT,
    singletons: str = "drop",
    repair_rounds: int = DEFAULT_REPAIR_ROUNDS,
    progress: bool = True,
    operator=None,
    run_dir: Path | str | None = None,
    workers: int = 1,
    max_tokens: int = OPERATOR_MAX_TOKENS,
) -> ConsolidationResult:
    """Merge run `run_id`'s patch branches into `t2s/<run>/result` (see the module docstring).

    `model` is a ModelSource for the merge operator (None: rules only); `operator` is an already
    loaded model used instead (tests pass a scripted one). `run_dir` defaults to runs/<run_id>.
    `workers` threads run the git merges of a level in parallel (each merge starts git and the
    merge driver as processes, so this scales with cores).
    """
    if batch < 2:
        raise RunError(f"--batch must be at least 2 (got {batch}): a node merges several branches")
    if min_support < 1:
        raise RunError(f"--min-support must be at least 1 (got {min_support})")
    if singletons not in SINGLETON_POLICIES:
        raise RunError(f"--singletons must be one of {', '.join(SINGLETON_POLICIES)}, not {singletons!r}")
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / run_id
    with repo.lock():
        patches = _patch_branches(repo, run_id)
        base_sha = _common_base(repo, run_id, patches)
        if operator is None and model is not None:
            operator = model.load()
        model_name = getattr(operator, "name", "") if operator is not None else ""
        effective_min = min(min_support, len(patches))
        notes = []
        if effective_min < min_support:
            notes.append(f"only {len(patches)} patch(es): lessons need support {effective_min}, "
                         f"not {min_support}, to be kept")
        with tempfile.TemporaryDirectory(prefix="t2s-merge-") as scratch:
            context = _Context(
                repo, run_id, base_sha, repo.read_skill(base_sha), repo.tree_of(base_sha),
                run_dir / "merge" / "support", Path(scratch), operator, model_name,
                effective_min, singletons, repair_rounds, max_tokens,
                {sha: n for n, sha in patches},
            )
            return _build_tree(context, [sha for _n, sha in patches], batch, progress,
                               max(1, workers), notes)


def _patch_branches(repo: SkillsRepo, run_id: str) -> list[tuple[int, str]]:
    found = []
    for name, sha in repo.branches(f"t2s/{run_id}/patch/").items():
        match = _PATCH_BRANCH.match(name)
        if match and match["run"] == run_id:
            found.append((int(match["n"]), sha))
    if not found:
        raise RunError(
            f"run {run_id} has no patch branches (t2s/{run_id}/patch/<n>) in {repo.path}: "
            "run `t2s analyze` for it first, or check the run id with `git branch --list 't2s/*'`"
        )
    return sorted(found)


def _common_base(repo: SkillsRepo, run_id: str, patches: list[tuple[int, str]]) -> str:
    infos = {info.sha: info for info in repo.log([sha for _n, sha in patches], walk=False)}
    bases: dict[str, list[int]] = {}
    for n, sha in patches:
        parents = infos[sha].parents
        if len(parents) != 1:
            raise RunError(
                f"t2s/{run_id}/patch/{n} is not a single commit on a base ({len(parents)} parents): "
                "a patch branch holds exactly one commit; delete it or re-run the analysis"
            )
        bases.setdefault(parents[0], []).append(n)
    if len(bases) > 1:
        listing = "; ".join(
            f"{sha[:10]}: patches {', '.join(map(str, ns[:8]))}{' ...' if len(ns) > 8 else ''}"
            for sha, ns in sorted(bases.items(), key=lambda item: -len(item[1]))
        )
        raise RunError(
            f"the patches of run {run_id} were proposed against {len(bases)} different bases "
            f"({listing}): merge patches of one base per run (move the others to another run id)"
        )
    return next(iter(bases))


def _level_count(count: int, batch: int) -> int:
    levels = 1
    while count > batch:
        count = -(-count // batch)
        levels += 1
    return levels


class _Workers:
    """Threads for the git work of a level, each with its own SkillsRepo.

    GitPython talks to long-lived `git cat-file` processes that must not be shared between
    threads, so every worker opens the repository itself; the object database is shared on disk.
    """

    def __init__(self, repo: SkillsRepo, workers: int):
        self.main = repo
        self.local = threading.local()
        self.opened: list[SkillsRepo] = []
        self.lock = threading.Lock()
        self.executor = ThreadPoolExecutor(workers) if workers > 1 else None

    def _repo(self) -> SkillsRepo:
        repo = getattr(self.local, "repo", None)
        if repo is None:
            repo = self.local.repo = SkillsRepo.open(self.main.path)
            with self.lock:
                self.opened.append(repo)
        return repo

    def map(self, work, items: list) -> list:
        """`work(repo, item)` for every item, results in order."""
        if self.executor is None:
            return [work(self.main, item) for item in items]
        return list(self.executor.map(lambda item: work(self._repo(), item), items))

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown()
        for repo in self.opened:
            repo.repo.close()


@dataclass
class _Job:
    """One node to build at this level: its group, support map and fold state."""

    level: int
    index: int
    ref: str
    old: str | None
    group: list[str]
    lessons: dict[str, Lesson]
    patches: list[int]
    env: dict[str, str]
    log_file: Path
    items: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _build_tree(
    context: _Context, patch_shas: list[str], batch: int, progress: bool, workers: int,
    notes: list[str],
) -> ConsolidationResult:
    repo, run_id = context.repo, context.run_id
    levels = _level_count(len(patch_shas), batch)
    total, count = 0, len(patch_shas)
    for _level in range(levels):
        count = -(-count // batch)
        total += count
    existing = repo.branches(f"t2s/{run_id}/merge/")
    existing_parents = {
        info.sha: info.parents for info in repo.log(sorted(set(existing.values())), walk=False)
    } if existing else {}
    pool = _Workers(repo, workers)
    current = list(patch_shas)
    nodes: list[NodeRecord] = []
    wanted_refs: dict[str, str] = {}
    try:
        with Progress(total, "merge", enabled=progress) as bar:
            for level in range(1, levels + 1):
                final = level == levels
                groups = [current[start : start + batch] for start in range(0, len(current), batch)]
                records: list[NodeRecord | None] = []
                jobs: list[_Job] = []
                for index, group in enumerate(groups):
                    ref = f"t2s/{run_id}/merge/{level}/{index}"
                    old = existing.get(ref)
                    record = _record_of(context, old) if old and \
                        existing_parents.get(old) == group else None
                    # a node filtered for prevalence as the last level is no intermediate node
                    if record is not None and record.final == final:
                        record.level, record.index, record.parents = level, index, list(group)
                        record.reused = True
                        records.append(record)
                        bar.advance(note=f"level {level} node {index} (done before)")
                    else:
                        records.append(None)
                        jobs.append(_Job(level, index, ref, old, group, {}, [], {}, Path()))
                if jobs:
                    _load_patch_records(context, pool, [sha for job in jobs for sha in job.group])
                    for job in jobs:
                        _prepare(context, job)
                    _fold_all(pool, jobs)
                for job in jobs:
                    record = _finish_node(context, job, final)
                    repo.update_refs({job.ref: record.sha},
                                     expected_old={job.ref: job.old or ZERO_SHA})
                    existing[job.ref] = record.sha
                    records[job.index] = record
                    note = " (rules fallback)" if record.fallback else ""
                    bar.advance(note=f"level {level} node {job.index}{note}")
                for index, record in enumerate(records):
                    wanted_refs[f"t2s/{run_id}/merge/{level}/{index}"] = record.sha
                nodes.extend(records)
                current = [record.sha for record in records]
    finally:
        pool.close()
    root = nodes[-1]
    stray = {ref: None for ref in existing if ref not in wanted_refs}
    repo.update_refs({result_branch_name(run_id): root.sha, **stray})
    lessons = root.lessons
    result = ConsolidationResult(
        run_id=run_id,
        base=context.base_sha,
        result_sha=root.sha,
        patches=len(patch_shas),
        levels=levels,
        nodes=nodes,
        kept=sorted((lessons[k] for k in root.kept if k in lessons), key=lambda l: -l.support),
        dropped=_dropped_overall(nodes),
        moved=[lessons[k] for k in root.moved if k in lessons],
        fallbacks=[f"level {n.level} node {n.index}: {n.fallback}" for n in nodes if n.fallback],
        reused=sum(1 for n in nodes if n.reused),
        notes=notes,
    )
    atomic_write_json(context.store.parent / "result.json", result.to_dict())
    return result


def _dropped_overall(nodes: list[NodeRecord]) -> list[tuple[Lesson, str]]:
    """Lessons some patch proposed that the result does not hold, with the first reason found."""
    root = nodes[-1]
    reasons: dict[str, str] = {}
    for node in nodes:
        for key, why in node.dropped.items():
            reasons.setdefault(key, f"level {node.level} node {node.index}: {why}")
    gone = [
        (lesson, reasons.get(key, "merged into another lesson"))
        for key, lesson in root.lessons.items()
        if key not in root.kept and key not in root.moved and lesson.patches
    ]
    return sorted(gone, key=lambda item: (-item[0].support, item[0].title))


# -- one node ----------------------------------------------------------------------------------


def _load_patch_records(context: _Context, pool: _Workers, shas: list[str]) -> None:
    """Support records of the patch commits among `shas`, read in parallel."""
    todo = [sha for sha in shas if sha in context.patch_numbers and sha not in context.records]

    def read(repo: SkillsRepo, sha: str) -> NodeRecord:
        number = context.patch_numbers[sha]
        lessons = lessons_of(context.base, repo.read_skill(sha), number)
        return NodeRecord(sha, 0, number, [context.base_sha], [number], lessons, list(lessons))

    for record in pool.map(read, todo):
        context.records[record.sha] = record


def _record_of(context: _Context, sha: str) -> NodeRecord:
    """The support record of a patch commit or of an earlier node (rebuilt if not stored)."""
    if sha not in context.records:
        if sha in context.patch_numbers:
            _load_patch_records(context, _Workers(context.repo, 1), [sha])
        else:
            try:
                context.records[sha] = NodeRecord.from_dict(read_json(context.store / f"{sha}.json"))
            except (OSError, ValueError, KeyError, TypeError):
                context.records[sha] = _rebuilt_record(context, sha)
    return context.records[sha]


def _rebuilt_record(context: _Context, sha: str) -> NodeRecord:
    """A node whose stored record is gone: sum its parents again, see what its skill holds."""
    info = context.repo.commit_info(sha)
    lessons: dict[str, Lesson] = {}
    patches: list[int] = []
    for parent in info.parents:
        record = _record_of(context, parent)
        add_lessons(lessons, record.lessons)
        patches += record.patches
    present = lessons_of(context.base, context.repo.read_skill(sha))
    for key, lesson in present.items():
        lessons.setdefault(key, lesson)
    level = int(info.trailers.get("T2S-Level", "0") or 0)
    final = "Last level: lessons need support" in info.body
    return NodeRecord(sha, level, 0, info.parents, sorted(patches), lessons, list(present),
                      final=final)


def _prepare(context: _Context, job: _Job) -> None:
    """Sum the group's support and write what the merge driver reads."""
    for sha in job.group:
        parent = _record_of(context, sha)
        add_lessons(job.lessons, parent.lessons)
        job.patches += parent.patches
    support_file = context.scratch / f"support-{job.level}-{job.index}.json"
    write_support(support_file, {k: lesson.support for k, lesson in job.lessons.items()})
    job.log_file = context.scratch / f"conflicts-{job.level}-{job.index}.jsonl"
    job.log_file.write_text("")
    job.env = {SUPPORT_ENV: str(support_file), TIES_ENV: "ours", CONFLICT_LOG_ENV: str(job.log_file),
               **fast_driver_config()}
    job.items = list(job.group)


def fast_driver_config() -> dict[str, str]:
    """Git config, passed by environment, that starts the driver with `python -S <file>`.

    The repository's own config says `python -m t2s.mergedriver` (what plain git uses); for its
    own merges consolidation skips site-packages, which the driver does not need (it imports
    only the standard library) and which cost half of every merge.
    """
    index = int(os.environ.get("GIT_CONFIG_COUNT") or 0)
    command = f"{shlex.quote(sys.executable)} -S {shlex.quote(mergedriver.__file__)} %O %A %B %L %P"
    return {
        "GIT_CONFIG_COUNT": str(index + 1),
        f"GIT_CONFIG_KEY_{index}": f"merge.{MERGE_DRIVER}.driver",
        f"GIT_CONFIG_VALUE_{index}": command,
    }


def _fold_all(pool: _Workers, jobs: list[_Job]) -> None:
    """Merge each job's group pairwise, in rounds (a tournament), all jobs' pairs in parallel.

    Pairs keep their left-to-right order, so ties between equally supported edits go to the
    earlier patches. Each pairwise result is an unreferenced scratch commit.
    """
    while any(len(job.items) > 1 for job in jobs):
        pairs = [(job, i) for job in jobs for i in range(0, len(job.items) - 1, 2)]

        def merge(repo: SkillsRepo, pair):
            job, i = pair
            return _merge_pair(repo, job, job.items[i], job.items[i + 1])

        results = pool.map(merge, pairs)
        merged: dict[int, list[str]] = {}
        for (job, _i), (sha, notes) in zip(pairs, results):
            merged.setdefault(id(job), []).append(sha)
            job.notes += notes
        for job in jobs:
            if len(job.items) > 1:
                job.items = merged[id(job)] + (job.items[-1:] if len(job.items) % 2 else [])


def _merge_pair(repo: SkillsRepo, job: _Job, ours: str, theirs: str) -> tuple[str, list[str]]:
    merged = repo.merge_tree(ours, theirs, env=job.env)
    notes: list[str] = []
    tree = merged.tree
    if not merged.clean:
        tree = _settle_unclean(repo, merged, ours, theirs, notes)
    return repo.commit_tree(tree, [ours, theirs], SCRATCH_MESSAGE), notes


def _settle_unclean(repo: SkillsRepo, merged, ours: str, theirs: str, notes: list[str]) -> str:
    """Conflicts the driver does not see (modify/delete, binary...): keep one side's version."""
    scratch = repo.commit_tree(merged.tree, [ours, theirs], SCRATCH_MESSAGE)
    skill = repo.read_skill(scratch)
    ours_skill, theirs_skill = repo.read_skill(ours), repo.read_skill(theirs)
    for path in merged.conflicted_paths:
        text = skill.files.get(path)
        if text is not None and not _MARKER_LINE.search(text):
            notes.append(f"git: {path} was changed on one side and deleted on the other; "
                         "kept the changed version")
            continue
        choice = ours_skill.files.get(path, theirs_skill.files.get(path))
        skill = skill.with_file(path, choice) if choice is not None else skill.without_file(path)
        notes.append(f"git could not merge {path}; kept one side's version")
    return repo.write_tree_from_skill(skill, base_tree=repo.tree_of(ours))


def _finish_node(context: _Context, job: _Job, final: bool) -> NodeRecord:
    """Shape the rules result, ask the operator, guard, and write the node's merge commit."""
    repo = context.repo
    merged = repo.read_skill(job.items[0])
    conflicts = [json.loads(line) for line in job.log_file.read_text().splitlines() if line.strip()]
    lessons = job.lessons
    shaped = shape_rules_result(
        context.base, merged, lessons, final=final,
        min_support=context.min_support, singletons=context.singletons,
    )
    skill, moved, dropped = shaped.skill, shaped.moved, dict(shaped.dropped)
    notes = job.notes + shaped.notes
    fallback = ""
    operator_lessons: list[str] = []
    if context.model is not None:
        parent_skills = [repo.read_skill(sha) for sha in job.group]
        messages = operator_messages(
            context.base, shown_edits(context.base, parent_skills, lessons), conflicts,
            patches=len(job.patches), final=final, min_support=context.min_support,
            singletons=context.singletons,
        )
        try:
            guarded, patch, operator_notes = run_operator(
                context.model, context.base, messages,
                repair_rounds=context.repair_rounds, max_tokens=context.max_tokens,
            )
        except OperatorFailed as failure:
            fallback = str(failure)
        else:
            skill, moved, dropped = guarded.skill, [], {}
            operator_lessons = [lesson for lesson in patch.lessons if lesson.strip()]
            notes += operator_notes
    if conflict_markers(skill):
        raise RepoError(
            f"internal error: node {job.level}/{job.index} of run {context.run_id} still holds "
            "conflict markers; nothing was committed (please report this)"
        )
    kept = _lessons_present(context.base, skill, lessons)
    for key, lesson in kept.items():
        lessons.setdefault(key, lesson)
    present_before = {key for sha in job.group for key in _record_of(context, sha).kept}
    for key in present_before - set(kept) - set(moved):
        dropped.setdefault(key, "left out by the merge operator" if context.model is not None
                           and not fallback else "superseded: a competing edit had more support")
    record = NodeRecord(
        "", job.level, job.index, list(job.group), sorted(job.patches), lessons, list(kept),
        moved, {k: v for k, v in dropped.items() if k in present_before},
        context.model_name, fallback, notes, final,
    )
    message = _node_message(context, record, operator_lessons, final)
    tree = repo.write_tree_from_skill(skill, base_tree=context.base_tree)
    record.sha = repo.commit_tree(tree, job.group, message)
    atomic_write_json(context.store / f"{record.sha}.json", record.to_dict())
    context.records[record.sha] = record
    return record


_STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "before", "by", "do", "for", "from", "if", "in",
    "into", "is", "it", "its", "of", "on", "or", "so", "than", "that", "the", "then", "this",
    "to", "when", "with", "you", "your",
})
RESEMBLANCE = 0.4  # Dice coefficient of content words above which new wording restates a lesson


def _content_words(text: str) -> frozenset[str]:
    words = re.findall(r"[a-z0-9_]+", normalize(text))
    return frozenset(word for word in words if word not in _STOPWORDS)


def _lessons_present(base: Skill, skill: Skill, lessons: dict[str, Lesson]) -> dict[str, Lesson]:
    """The lessons `skill` holds, with their support.

    Wording no patch proposed (the operator's) gets the summed support of the proposed lessons
    it resembles (shared content words), and their patches: a principle restating five patches'
    lesson carries their evidence.
    """
    present: dict[str, Lesson] = {}
    known = [(lesson, _content_words(lesson.text)) for lesson in lessons.values() if lesson.patches]
    for key, lesson in lessons_of(base, skill).items():
        if key in lessons:
            present[key] = lessons[key]
            continue
        words = _content_words(lesson.text)
        support, patches = 0, set()
        for other, other_words in known:
            shared = len(words & other_words)
            if shared and 2 * shared / (len(words) + len(other_words)) >= RESEMBLANCE:
                support += other.support
                patches |= set(other.patches)
        present[key] = Lesson(key, lesson.text, max(support, 1), sorted(patches))
    return present


def _node_message(context: _Context, record: NodeRecord, operator_lessons: list[str], final: bool) -> str:
    count = len(record.parents)
    what = "patch" if record.level == 1 else "node"
    if count == 1:
        subject = f"Consolidate 1 {what} (level {record.level}, node {record.index}) of run {context.run_id}"
    else:
        plural = "patches" if what == "patch" else "nodes"
        subject = (f"Merge {count} {plural} (level {record.level}, node {record.index}) of run "
                   f"{context.run_id}")
    lessons = record.lessons
    kept = sorted((lessons[k] for k in record.kept), key=lambda l: (-l.support, l.title))
    moved = [lessons[k] for k in record.moved if k in lessons]
    dropped = sorted(((lessons[k], why) for k, why in record.dropped.items() if k in lessons),
                     key=lambda item: (-item[0].support, item[0].title))
    paragraphs = [subject]
    how = ("Merged by the rules of git and the t2s merge driver"
           + (f", consolidated by the merge operator {context.model_name}" if context.model_name
              and not record.fallback else "")
           + f"; {len(record.patches)} patch{'es' if len(record.patches) != 1 else ''} below."
           + (f" Last level: lessons need support {context.min_support}." if final else ""))
    paragraphs.append(how)
    if record.fallback:
        paragraphs.append(f"Fallback: the operator's answer was not used ({record.fallback}); "
                          "this node holds the rules-only result.")
    if operator_lessons:
        paragraphs.append("Operator's lessons:\n" + "\n".join(f"- {l}" for l in operator_lessons))
    paragraphs.append(_listing("Kept", [l.describe() for l in kept]))
    if moved:
        paragraphs.append(_listing(f"Moved to {RARE_LESSONS_FILE}", [l.describe() for l in moved]))
    if dropped:
        paragraphs.append(_listing("Dropped", [f"{l.describe()}: {why}" for l, why in dropped]))
    if record.notes:
        paragraphs.append(_listing("Notes", record.notes))
    paragraphs.append(format_trailers([
        ("T2S-Run", context.run_id),
        ("T2S-Level", record.level),
        ("T2S-Node", record.index),
        ("T2S-Patches", len(record.patches)),
        ("T2S-Support", record.support),
        ("T2S-Model", context.model_name or "rules"),
        ("T2S-Fallback", record.fallback[:200]),
    ]))
    return "\n\n".join(paragraphs) + "\n"


def _listing(title: str, lines: list[str]) -> str:
    if not lines:
        return f"{title}: none"
    shown = lines[:LISTED_LESSONS]
    more = [f"... and {len(lines) - len(shown)} more (see the run's merge/ directory)"] \
        if len(lines) > len(shown) else []
    return f"{title} ({len(lines)}):\n" + "\n".join(f"- {line}" for line in shown + more)


# -- accept ------------------------------------------------------------------------------------


@dataclass
class AcceptResult:
    run_id: str
    result_sha: str
    previous_main: str
    moved: bool  # False when main already contained the result
    # Other runs whose results main now contains and did not before: the earlier rounds of
    # an evolve run that this result builds on.
    also_accepted: list[str] = field(default_factory=list)


def accept(repo: SkillsRepo, run_id: str) -> AcceptResult:
    """Fast-forward `main` to the run's result: main must be in the result's history (the run's
    base, or an earlier round the result builds on)."""
    result_ref = result_branch_name(run_id)
    with repo.lock():
        if result_ref not in repo.branches(result_ref):
            raise RunError(f"run {run_id} has no result branch {result_ref}: run `t2s merge {run_id}` first")
        result_sha = repo.resolve(result_ref)
        main_sha = repo.resolve(MAIN)
        if repo.is_ancestor(result_sha, main_sha):
            return AcceptResult(run_id, result_sha, main_sha, False)
        if not repo.is_ancestor(main_sha, result_sha):
            raise RunError(
                f"{MAIN} moved elsewhere since run {run_id} started: {MAIN} is {main_sha[:10]}, "
                f"the run's base {_base_of(repo, result_sha)[:10]}, and the result does not "
                f"build on {MAIN}. Re-run the run on the new {MAIN}, or merge the result by "
                f"hand with `git merge {result_ref}` in {repo.path}"
            )
        before = repo.branches("t2s/", merged_into=main_sha)
        earlier = sorted(
            _run_of_result(name) for name in repo.branches("t2s/", merged_into=result_sha)
            if name.endswith("/result") and name != result_ref and name not in before
        )
        repo.move_branch(MAIN, result_sha)
        return AcceptResult(run_id, result_sha, main_sha, True, earlier)


def _run_of_result(branch: str) -> str:
    return branch.removeprefix("t2s/").removesuffix("/result")


def _base_of(repo: SkillsRepo, result_sha: str) -> str:
    """The skill a result was merged from: follow first parents down to a patch, take its parent."""
    info = repo.commit_info(result_sha)
    while "T2S-Level" in info.trailers and info.parents:
        info = repo.commit_info(info.parents[0])
    if not info.parents:
        raise RunError(f"{result_sha[:10]} does not descend from a patch commit: it is no t2s result")
    return info.parents[0]
