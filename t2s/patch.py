"""Patches: structured, minimal edits to a skill, and how they are applied.

A patch comes from a model (an analyst or the merge operator), so it is untrusted. `Patch.from_dict`
checks its structure (PatchError when malformed). `apply_patch` never raises on bad content: each
edit is applied or refused with a reason, and the skill it returns always passes the validator.
"""

from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from t2s.errors import PatchError
from t2s.skill import SKILL_FILE, Skill, is_protected, validate_file, validate_skill

OPS = (
    "insert_after",
    "insert_before",
    "append_to_section",
    "replace_in_section",
    "add_section",
    "delete_section",
    "create_file",
    "delete_file",
)
FIELDS = ("op", "file", "section", "anchor", "target", "content")
# The fields each operation needs non-empty (beyond `op`; `file` defaults to SKILL.md).
REQUIRED_FIELDS = {
    "insert_after": ("anchor", "content"),
    "insert_before": ("anchor", "content"),
    "append_to_section": ("section", "content"),
    "replace_in_section": ("section", "target"),
    "add_section": ("section", "content"),
    "delete_section": ("section",),
    "create_file": ("file", "content"),
    "delete_file": ("file",),
}
FILE_OPS = ("create_file", "delete_file")

MAX_LESSONS = 3
MAX_EDITS = 6
# llama-cpp-python 0.3.x writes maxLength n as n nested optional groups; llama.cpp refuses such
# a grammar beyond about 1,000 ("exceeds sane defaults") and the process then segfaults. Stay
# well below that.
GRAMMAR_MAX_LENGTH = 900
# "[.]", not "\.": llama-cpp-python's converter emits "\." into a grammar literal, which
# llama.cpp cannot parse (and then crashes).
FILE_PATTERN = r"^(SKILL[.]md|references/[a-z0-9][a-z0-9-]{0,40}[.]md)$"
# Flat and bounded, so that a llama.cpp grammar built from it stays small and a small model
# cannot run away; every key is required so the grammar never has to choose whether to emit one.
PATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["reasoning", "lessons", "edits"],
    "properties": {
        "reasoning": {"type": "string", "maxLength": 600},
        "lessons": {
            "type": "array",
            "maxItems": MAX_LESSONS,
            "items": {"type": "string", "maxLength": 200},
        },
        "edits": {
            "type": "array",
            "maxItems": MAX_EDITS,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": list(FIELDS),
                "properties": {
                    "op": {"type": "string", "enum": list(OPS)},
                    # The grammar keeps a model to paths an edit may name at all.
                    "file": {"type": "string", "pattern": FILE_PATTERN},
                    "section": {"type": "string", "maxLength": 120},
                    "anchor": {"type": "string", "maxLength": 400},
                    "target": {"type": "string", "maxLength": 600},
                    "content": {"type": "string", "maxLength": GRAMMAR_MAX_LENGTH},
                },
            },
        },
    },
}

_REFERENCE_NAME = re.compile(r"^references/[A-Za-z0-9][A-Za-z0-9._-]*\.md$")
FUZZY_RATIO = 0.9
# Models often quote the start of a long line; a quote this long that occurs in one line only
# names that line.
MIN_PARTIAL_ANCHOR = 16


def patch_schema() -> dict[str, Any]:
    """A copy of the JSON schema patches are decoded under (for grammars and prompts)."""
    return copy.deepcopy(PATCH_SCHEMA)


def _input_schema(strict: bool) -> dict[str, Any]:
    """PATCH_SCHEMA for reading: unused edit fields may be left out; limits only when strict.

    A path outside FILE_PATTERN is not malformed structure: `apply_patch` refuses that edit
    alone, with its reason.
    """
    schema = patch_schema()
    edit = schema["properties"]["edits"]["items"]
    edit["required"] = ["op"]
    edit["properties"]["file"] = {"type": "string"}
    if not strict:
        _drop_limits(schema)
    return schema


def _drop_limits(schema: Any) -> None:
    if isinstance(schema, dict):
        schema.pop("maxLength", None)
        schema.pop("maxItems", None)
        for value in schema.values():
            _drop_limits(value)


_VALIDATORS = {
    strict: jsonschema.Draft202012Validator(_input_schema(strict)) for strict in (True, False)
}


@dataclass(frozen=True, slots=True)
class Edit:
    """One operation on one file; fields an operation does not use are empty."""

    op: str
    file: str = SKILL_FILE
    section: str = ""
    anchor: str = ""
    target: str = ""
    content: str = ""

    def __post_init__(self):
        for name in FIELDS:
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, "")
            elif not isinstance(value, str):
                kind = type(value).__name__
                raise PatchError(f"edit field '{name}' must be a string, not {kind}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], index: int = 0) -> Edit:
        """An edit that has the fields its operation needs (PatchError otherwise)."""
        where = f"edit {index + 1}"
        if not isinstance(data, dict):
            raise PatchError(f"{where} is not a JSON object")
        op = data.get("op")
        if op not in OPS:
            raise PatchError(f"{where} has unknown op {op!r}; use one of {', '.join(OPS)}")
        values = {name: data.get(name) or "" for name in FIELDS[1:]}
        for name, value in values.items():
            if not isinstance(value, str):
                raise PatchError(f"{where} ({op}): '{name}' must be a string")
        values = {name: value.replace("\r\n", "\n") for name, value in values.items()}
        if op not in FILE_OPS and not values["file"].strip():
            values["file"] = SKILL_FILE
        for name in REQUIRED_FIELDS[op]:
            if not values[name].strip():
                raise PatchError(f"{where} ({op}) needs a non-empty '{name}'")
        return cls(op=op, **values)

    def to_dict(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in FIELDS}

    def describe(self) -> str:
        """A short label for notes and logs."""
        what = self.section or self.anchor or self.target
        what = what.strip().splitlines()[0][:60] if what.strip() else ""
        return f"{self.op} {self.file}" + (f" {what!r}" if what else "")


@dataclass(frozen=True, slots=True)
class Patch:
    reasoning: str
    lessons: list[str]
    edits: list[Edit]

    @classmethod
    def from_dict(cls, data: Any, *, strict: bool = True) -> Patch:
        """A patch from decoded JSON; PatchError with a one-line reason when malformed.

        `strict` enforces PATCH_SCHEMA's size limits (model output); consolidation passes
        False for patches it assembled itself from several others.
        """
        if not isinstance(data, dict):
            raise PatchError("a patch must be a JSON object with reasoning, lessons and edits")
        error = jsonschema.exceptions.best_match(_VALIDATORS[strict].iter_errors(data))
        if error is not None:
            where = "/".join(str(part) for part in error.absolute_path) or "patch"
            raise PatchError(f"patch is malformed at {where}: {_describe(error)}")
        edits = [Edit.from_dict(edit, index) for index, edit in enumerate(data["edits"])]
        return cls(data["reasoning"].strip(), [lesson.strip() for lesson in data["lessons"]], edits)

    @classmethod
    def from_json(cls, text: str, *, strict: bool = True) -> Patch:
        import json

        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise PatchError(f"patch is not valid JSON: {error}") from None
        return cls.from_dict(data, strict=strict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reasoning": self.reasoning,
            "lessons": list(self.lessons),
            "edits": [edit.to_dict() for edit in self.edits],
        }


def _describe(error: jsonschema.ValidationError) -> str:
    """A schema error in a few words, without echoing a long value back."""
    if error.validator == "enum":
        return f"{str(error.instance)[:40]!r} is not one of {', '.join(error.validator_value)}"
    if error.validator == "maxLength":
        return f"{len(error.instance)} characters, more than {error.validator_value}"
    if error.validator == "maxItems":
        return f"{len(error.instance)} items, more than {error.validator_value}"
    return error.message if len(error.message) <= 160 else error.message[:157] + "..."


@dataclass(frozen=True, slots=True)
class RefusedEdit:
    edit: Edit
    reason: str
    index: int = -1  # position of the edit in its patch (0-based)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "reason": self.reason, "edit": self.edit.to_dict()}


@dataclass
class ApplyResult:
    """The patched skill (always valid), what was applied, what was refused and why."""

    skill: Skill
    applied: list[Edit]
    refused: list[RefusedEdit]
    notes: list[str] = field(default_factory=list)
    rejection: str = ""  # why the patch as a whole was rejected ("" when it was not)

    @property
    def rejected(self) -> bool:
        return bool(self.rejection)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rejected": self.rejected,
            "rejection": self.rejection,
            "applied": [edit.to_dict() for edit in self.applied],
            "refused": [refused.to_dict() for refused in self.refused],
            "notes": list(self.notes),
        }


class _Refused(Exception):
    """An edit cannot be applied; the message is the reason."""


def apply_patch(skill: Skill, patch: Patch, *, base: Skill | None = None) -> ApplyResult:
    """Apply `patch` to `skill`, refusing each edit that cannot be applied cleanly.

    Protected files and the skill's name are judged against `base` (default: `skill`). After
    the edits: a new reference without a link from SKILL.md, a link without its file, and a
    deleted file that is still linked are refused; then, while the result is invalid, the last
    applied edit is refused. The result never has a violation `skill` did not already have.
    """
    reference = base if base is not None else skill
    patterns = set(reference.protected_patterns()) | set(skill.protected_patterns())
    known = {_violation_key(v) for v in validate_skill(skill, base=reference)}
    excluded: dict[int, str] = {}
    while True:
        run = _run_edits(skill, patch.edits, excluded, patterns, reference)
        unpaired = _unpaired_edits(run)
        if unpaired:
            excluded.update(unpaired)
            continue
        invalid = [
            v for v in validate_skill(run.skill, base=reference) if _violation_key(v) not in known
        ]
        if invalid and run.applied:
            excluded[run.applied[-1]] = f"the patched skill would fail validation: {invalid[0]}"
            continue
        break
    refused = [
        RefusedEdit(patch.edits[index], reason, index)
        for index, reason in sorted(run.refused.items())
    ]
    applied = [patch.edits[index] for index in run.applied]
    rejection = ""
    if not patch.edits:
        rejection = "the patch has no edits"
    elif not applied:
        rejection = f"all {len(patch.edits)} edits were refused; first: {refused[0].reason}"
    elif run.skill == skill:
        rejection = "the applied edits change nothing"
    return ApplyResult(run.skill, applied, refused, run.notes, rejection)


def _violation_key(violation) -> tuple[str, str, str]:
    return (violation.file, violation.rule, violation.message)


@dataclass
class _Run:
    skill: Skill
    applied: list[int] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    links_added: dict[str, list[int]] = field(default_factory=dict)  # path -> edits adding it
    created: dict[int, str] = field(default_factory=dict)
    deleted: dict[int, str] = field(default_factory=dict)


def _run_edits(skill, edits, excluded, patterns, reference) -> _Run:
    run = _Run(skill)
    for index, edit in enumerate(edits):
        if index in excluded:
            run.refused[index] = excluded[index]
            continue
        current = run.skill
        try:
            path = _edit_path(edit, patterns)
            updated, notes = _apply_edit(current, edit, path)
            _check_local_rules(current, updated, path, reference)
        except _Refused as refusal:
            run.refused[index] = str(refusal)
            continue
        run.skill = updated
        run.applied.append(index)
        run.notes.extend(f"edit {index + 1} ({edit.op}): {note}" for note in notes)
        if edit.op == "create_file":
            run.created[index] = path
        elif edit.op == "delete_file":
            run.deleted[index] = path
        if path in updated.files:
            before = {link.path for link in current.links(path)} if path in current.files else set()
            for link in updated.links(path):
                if link.path not in before:
                    run.links_added.setdefault(link.path, []).append(index)
    return run


def _unpaired_edits(run: _Run) -> dict[int, str]:
    """Edits that break the pairing rule: a new reference needs a link, a link needs its file."""
    found = {}
    result = run.skill
    linked_from_skill = {link.path for link in result.links(SKILL_FILE)}
    for index, path in run.created.items():
        if path not in linked_from_skill:
            found[index] = f"{path} was created without a link to it from SKILL.md"
    for link in result.links():
        if link.path in result.files:
            continue
        adders = run.links_added.get(link.path, [])
        for index in adders:
            found[index] = f"adds a link to {link.path}, which does not exist"
        if not adders:
            for index, path in run.deleted.items():
                if path == link.path:
                    found[index] = f"deletes {path}, which {link.file} still links to"
    return found


def _check_local_rules(current: Skill, updated: Skill, path: str, reference: Skill) -> None:
    """Refuse an edit that breaks a rule of the file it touches (links are judged at the end)."""
    if path in updated.files:
        before = {_violation_key(v) for v in validate_file(current, path)} \
            if path in current.files else set()
        for violation in validate_file(updated, path):
            if _violation_key(violation) not in before:
                raise _Refused(f"it would break the skill format: {violation.message}")
    if path == SKILL_FILE and updated.name != current.name and current.name == reference.name:
        raise _Refused(f"it would change the skill's name from {reference.name!r}")


def _edit_path(edit: Edit, patterns) -> str:
    path = (edit.file or "").strip()
    while path.startswith("./"):
        path = path[2:]
    if not path and edit.op not in FILE_OPS:
        path = SKILL_FILE
    if path != SKILL_FILE and (not _REFERENCE_NAME.match(path) or ".." in path):
        raise _Refused(f"file {edit.file!r} is not allowed: edit SKILL.md or references/<name>.md")
    if is_protected(path, patterns):
        raise _Refused(f"file {path} is protected")
    return path


def _apply_edit(skill: Skill, edit: Edit, path: str) -> tuple[Skill, list[str]]:
    """The skill with one edit applied, and notes about fuzzy matches; _Refused otherwise."""
    op = edit.op
    if op not in OPS:
        raise _Refused(f"unknown op {op!r}")
    if op == "create_file":
        if path == SKILL_FILE or path in skill.files:
            raise _Refused(f"file {path} already exists; edit it instead")
        return skill.with_file(path, _block(edit.content, "content") + "\n"), []
    if path not in skill.files:
        raise _Refused(f"file {path} does not exist")
    if op == "delete_file":
        if path == SKILL_FILE:
            raise _Refused("SKILL.md cannot be deleted")
        return skill.without_file(path), []
    lines = skill.files[path].splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    notes: list[str] = []
    if op in ("insert_after", "insert_before"):
        start, end = _find_anchor(lines, edit.anchor, path, skill.sections(path), notes)
        new = _lines(_block(edit.content, "content"))
        lines = lines[:end] + new + lines[end:] if op == "insert_after" \
            else lines[:start] + new + lines[start:]
    elif op == "append_to_section":
        lines = _append_to_section(skill, lines, path, edit, notes)
    elif op == "replace_in_section":
        lines = _replace_in_section(skill, lines, path, edit, notes)
    elif op == "add_section":
        lines = _add_section(skill, lines, path, edit)
    elif op == "delete_section":
        section = _find_section(skill, path, edit.section, notes)
        if section.level == 1:
            raise _Refused(f"section {section.title!r} is the top-level section; it stays")
        lines = lines[: section.start_line - 1] + lines[section.end_line :]
        lines = _collapse_blank_lines(lines, section.start_line - 1)
    return skill.with_file(path, "".join(lines)), notes


def _block(content: str, name: str) -> str:
    text = content.replace("\r\n", "\n").strip("\n")
    if not text.strip():
        raise _Refused(f"'{name}' is empty")
    return text


def _lines(text: str) -> list[str]:
    return [line + "\n" for line in text.split("\n")]


def _normal(text: str) -> str:
    return " ".join(text.split()).lower()


def _find_anchor(lines, anchor: str, path: str, sections, notes: list[str]) -> tuple[int, int]:
    """The 0-based [start, end) line range of `anchor` in `lines`.

    Exact lines first; then the same lines ignoring whitespace and case; then, for a one-line
    anchor, a heading whose title it names, the one line at least FUZZY_RATIO similar, or the
    one line that contains it (at least MIN_PARTIAL_ANCHOR characters).
    """
    wanted = anchor.replace("\r\n", "\n").strip("\n").split("\n")
    if not "".join(wanted).strip():
        raise _Refused("'anchor' is empty")
    size = len(wanted)
    windows = range(len(lines) - size + 1)
    exact = [i for i in windows if [line.rstrip("\r\n") for line in lines[i : i + size]] == wanted]
    if len(exact) == 1:
        return exact[0], exact[0] + size
    if len(exact) > 1:
        raise _Refused(f"anchor matches {len(exact)} places in {path}; quote a unique anchor")
    normal = [_normal(line) for line in wanted]
    loose = [i for i in windows if [_normal(line) for line in lines[i : i + size]] == normal]
    if len(loose) == 1:
        notes.append(f"anchor matched fuzzily (whitespace/case) at line {loose[0] + 1} of {path}")
        return loose[0], loose[0] + size
    if len(loose) > 1:
        raise _Refused(f"anchor matches {len(loose)} places in {path}; quote a unique anchor")
    if size == 1:
        headings = [
            s.start_line - 1 for s in sections if _loose_title(s.title) == _loose_title(wanted[0])
        ]
        if len(headings) == 1:
            notes.append(f"anchor matched the heading at line {headings[0] + 1} of {path}")
            return headings[0], headings[0] + 1
        found = _closest_line(lines, range(len(lines)), wanted[0])
        if found is not None:
            index, ratio = found
            notes.append(
                f"anchor matched fuzzily (similarity {ratio:.2f}) at line {index + 1} of {path}: "
                f"{lines[index].strip()[:80]!r}"
            )
            return index, index + 1
        part = _normal(wanted[0])
        containing = [i for i, line in enumerate(lines) if part in _normal(line)]
        if len(part) >= MIN_PARTIAL_ANCHOR and len(containing) == 1:
            index = containing[0]
            notes.append(f"anchor matched part of line {index + 1} of {path}; the edit uses the "
                         "whole line")
            return index, index + 1
    raise _Refused(f"anchor not found in {path}")


def _closest_line(lines: list[str], indices, wanted: str) -> tuple[int, float] | None:
    """The one line at least FUZZY_RATIO similar to `wanted` (None if none, or a tie)."""
    target = _normal(wanted)
    if not target:
        return None
    scored = []
    matcher = difflib.SequenceMatcher(b=target, autojunk=False)  # b is the cached side
    for index in indices:
        candidate = _normal(lines[index])
        if not candidate:
            continue
        matcher.set_seq1(candidate)
        if matcher.real_quick_ratio() >= FUZZY_RATIO and matcher.quick_ratio() >= FUZZY_RATIO:
            ratio = matcher.ratio()
            if ratio >= FUZZY_RATIO:
                scored.append((ratio, index))
    scored.sort(reverse=True)
    if not scored or (len(scored) > 1 and scored[1][0] == scored[0][0]):
        return None
    return scored[0][1], scored[0][0]


def _find_section(skill: Skill, path: str, title: str, notes: list[str]):
    wanted = title.strip().lstrip("#").strip()
    if not wanted:
        raise _Refused("'section' is empty")
    sections = skill.sections(path)
    exact = [s for s in sections if s.title == wanted]
    if len(exact) > 1:
        raise _Refused(f"section {wanted!r} appears {len(exact)} times in {path}")
    if exact:
        return exact[0]
    loose = [s for s in sections if _loose_title(s.title) == _loose_title(wanted)]
    if len(loose) == 1:
        notes.append(f"section {wanted!r} matched fuzzily as {loose[0].title!r} in {path}")
        return loose[0]
    titles = [s.title + "\n" for s in sections]
    found = _closest_line(titles, range(len(titles)), wanted) if not loose else None
    if found is not None:
        section = sections[found[0]]
        notes.append(
            f"section {wanted!r} matched fuzzily (similarity {found[1]:.2f}) as "
            f"{section.title!r} in {path}"
        )
        return section
    raise _Refused(f"section {wanted!r} not found in {path}")


def _loose_title(title: str) -> str:
    return _normal(title.strip().strip("*_`").rstrip(":"))


def _own_body_end(skill: Skill, path: str, section) -> int:
    """The last line (1-based) of a section's own text, before its first subsection."""
    for other in skill.sections(path):
        if other.start_line > section.start_line:
            return min(section.end_line, other.start_line - 1)
    return section.end_line


def _append_to_section(skill, lines, path, edit, notes) -> list[str]:
    section = _find_section(skill, path, edit.section, notes)
    end = _own_body_end(skill, path, section)
    position = end
    while position > section.start_line and not lines[position - 1].strip():
        position -= 1
    new = _lines(_block(edit.content, "content"))
    if position == section.start_line:
        new = ["\n"] + new  # a heading with no text yet: keep a blank line under it
    if position == end and end < len(lines):
        new = new + ["\n"]  # the next heading follows directly: keep a blank line before it
    return lines[:position] + new + lines[position:]


def _replace_in_section(skill, lines, path, edit, notes) -> list[str]:
    section = _find_section(skill, path, edit.section, notes)
    before = "".join(lines[: section.start_line - 1])
    span = "".join(lines[section.start_line - 1 : section.end_line])
    after = "".join(lines[section.end_line :])
    target = edit.target.replace("\r\n", "\n").strip("\n")
    if not target.strip():
        raise _Refused("'target' is empty")
    replacement = edit.content.replace("\r\n", "\n").strip("\n")
    count = span.count(target)
    if count > 1:
        raise _Refused(f"target appears {count} times in section {section.title!r}; quote more")
    if count == 1:
        start = span.index(target)
        stop = start + len(target)
    else:
        pattern = r"\s+".join(re.escape(token) for token in target.split())
        matches = list(re.finditer(pattern, span, re.IGNORECASE))
        if len(matches) > 1:
            raise _Refused(
                f"target appears {len(matches)} times in section {section.title!r}; quote more"
            )
        if matches:
            start, stop = matches[0].span()
            notes.append(f"target matched fuzzily (whitespace/case) in section {section.title!r}")
        else:
            span_lines = span.splitlines(keepends=True)
            found = _closest_line(span_lines, range(len(span_lines)), target) \
                if "\n" not in target else None
            if found is None:
                raise _Refused(f"target not found in section {section.title!r} of {path}")
            index, ratio = found
            start = sum(len(line) for line in span_lines[:index])
            stop = start + len(span_lines[index].rstrip("\n"))
            notes.append(
                f"target matched fuzzily (similarity {ratio:.2f}) in section "
                f"{section.title!r}: {span_lines[index].strip()[:80]!r}"
            )
    whole_line = (start == 0 or span[start - 1] == "\n") and span[stop : stop + 1] == "\n"
    if not replacement and whole_line:
        stop += 1  # deleting whole lines takes their line breaks too
    text = before + span[:start] + replacement + span[stop:] + after
    return text.splitlines(keepends=True)


def _add_section(skill, lines, path, edit) -> list[str]:
    title = edit.section.strip()
    hashes = len(title) - len(title.lstrip("#"))
    title = title.lstrip("#").strip()
    if not title:
        raise _Refused("'section' is empty")
    if any(_loose_title(s.title) == _loose_title(title) for s in skill.sections(path)):
        raise _Refused(f"section {title!r} already exists in {path}; use append_to_section")
    level = min(max(hashes, 2), 3)
    body = _lines(_block(edit.content, "content"))
    first = body[0].strip()
    if first.startswith("#") and _loose_title(first.lstrip("#")) == _loose_title(title):
        body = body[1:]  # the model repeated the heading in the body
        while body and not body[0].strip():
            body = body[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    heading = ["#" * level + " " + title + "\n"]
    separator = ["\n"] if lines else []
    return lines + separator + heading + (["\n"] + body if body else [])


def _collapse_blank_lines(lines: list[str], at: int) -> list[str]:
    """Remove the doubled blank line a deletion at `at` leaves behind, and trailing blanks."""
    if 0 < at < len(lines) and not lines[at - 1].strip() and not lines[at].strip():
        lines = lines[:at] + lines[at + 1 :]
    while len(lines) > 1 and not lines[-1].strip():
        lines = lines[:-1]
    return lines
