"""A skill in memory: its text files, front matter, sections and links, and the format validator.

A skill is a directory with ``SKILL.md`` (YAML front matter, then markdown), optional
``references/`` (loaded on demand by the agent) and ``scripts/``. t2s keeps a skill as a mapping
from relative POSIX path to text. Parsing is cached by text, so the many short-lived skills that
consolidation creates while applying patches share the work.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import os
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import yaml

from t2s.errors import SkillError
from t2s.fsutil import atomic_write_text

SKILL_FILE = "SKILL.md"
# Top-level places a skill's files may live; anything else is refused when reading a directory.
SKILL_DIRS = ("references", "scripts")

MAX_NAME_CHARS = 64
MAX_DESCRIPTION_CHARS = 1024
# The published limits say "under": SKILL.md must have fewer than 500 lines, a reference fewer
# than 300.
SKILL_LINE_LIMIT = 500
REFERENCE_LINE_LIMIT = 300
NAME_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
# scripts/ is always protected; a skill can protect more paths with front matter `protected:`.
ALWAYS_PROTECTED = ("scripts/**",)

# A closing run of #s only counts after a space ("## Use C#" keeps its "#").
_HEADING = re.compile(r"^(#{1,3})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^[ ]{0,3}(`{3,}|~{3,})")
_INLINE_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'(][^)]*)?\s*\)")
_REFERENCE_DEFINITION = re.compile(r"^[ ]{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_INLINE_CODE = re.compile(r"`+[^`\n]*`+")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True, slots=True)
class Section:
    """A `#`, `##` or `###` heading and the lines it governs (1-based, inclusive).

    `end_line` is the line before the next heading of the same or a higher level (so a section
    includes its subsections), or the last line of the file.
    """

    title: str
    level: int
    start_line: int
    end_line: int


@dataclass(frozen=True, slots=True)
class Link:
    """A relative markdown link: where it is, what it says, and the skill path it points to."""

    file: str
    line: int
    target: str
    path: str


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule. `line` is 1-based; rules about a whole file point at line 1.

    `rule` names the rule (e.g. "link", "length") so callers can tell violations apart without
    parsing messages; messages never contain line numbers, so they compare across edits.
    """

    file: str
    line: int
    message: str
    rule: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "message": self.message, "rule": self.rule}


def check_skill_path(path: str) -> str:
    """`path` if it is a safe relative POSIX path inside a skill's layout; else SkillError."""
    if not isinstance(path, str) or not path:
        raise SkillError("a skill file path must be a non-empty string")
    if "\\" in path or path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise SkillError(f"{path!r}: skill paths are relative POSIX paths (no '/' or '\\' prefix)")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise SkillError(f"{path!r}: skill paths may not contain '.', '..' or empty parts")
    if path != SKILL_FILE and (len(parts) < 2 or parts[0] not in SKILL_DIRS):
        raise SkillError(
            f"{path}: only SKILL.md, references/ and scripts/ belong in a skill; move or remove it"
        )
    return path


def _check_file(path: str, text: str) -> None:
    check_skill_path(path)
    if not isinstance(text, str):
        raise SkillError(f"{path}: skill files are text; got {type(text).__name__}")


class Skill:
    """A skill's text files, keyed by relative POSIX path (``SKILL.md``, ``references/x.md``...).

    Treat a Skill as a value: `with_file` / `without_file` return new skills. Parsed views
    (front matter, sections, links) are cached by file text.
    """

    __slots__ = ("files",)

    def __init__(self, files: Mapping[str, str]):
        for path, text in files.items():
            _check_file(path, text)
        self.files: dict[str, str] = dict(files)

    @classmethod
    def _trusted(cls, files: dict[str, str]) -> Skill:
        """A skill from files already checked (patching makes many; each checks one path)."""
        skill = cls.__new__(cls)
        skill.files = files
        return skill

    # -- reading and writing directories -------------------------------------------------

    @classmethod
    def from_dir(cls, path: Path | str) -> Skill:
        root = Path(path)
        if not root.is_dir():
            raise SkillError(f"{root} is not a directory: give the path of a skill directory")
        if not (root / SKILL_FILE).is_file():
            raise SkillError(f"{root} has no SKILL.md: a skill directory starts with SKILL.md")
        files = {}
        for relative in _walk(root):
            try:
                check_skill_path(relative)
            except SkillError as error:
                raise SkillError(f"{root}: {error}") from None
            try:
                files[relative] = (root / relative).read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise SkillError(
                    f"{root / relative} is not UTF-8 text: t2s skills hold text files only"
                ) from None
        return cls(files)

    def to_dir(self, path: Path | str) -> None:
        """Write every file (each atomically) and remove skill files that are no longer here."""
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        for relative in _walk(root):
            if relative not in self.files and _in_layout(relative):
                (root / relative).unlink()
        for relative, text in self.files.items():
            target = root / relative
            if not target.is_file() or target.read_text(encoding="utf-8", errors="replace") != text:
                atomic_write_text(target, text)
        for directory in SKILL_DIRS:
            _remove_empty_dirs(root / directory)

    # -- values ---------------------------------------------------------------------------

    def with_file(self, path: str, text: str) -> Skill:
        _check_file(path, text)
        files = dict(self.files)
        files[path] = text
        return Skill._trusted(files)

    def without_file(self, path: str) -> Skill:
        files = dict(self.files)
        files.pop(path, None)
        return Skill._trusted(files)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Skill) and self.files == other.files

    __hash__ = None  # files is a mutable dict

    def __repr__(self) -> str:
        return f"Skill({self.name or '?'!r}, {len(self.files)} files)"

    # -- parsed views ---------------------------------------------------------------------

    @property
    def front_matter(self) -> dict[str, Any]:
        """The parsed YAML front matter of SKILL.md ({} when missing or unparseable)."""
        parsed = _parse_front_matter(self.files.get(SKILL_FILE, ""))
        return copy.deepcopy(parsed.data) if isinstance(parsed.data, dict) else {}

    @property
    def name(self) -> str:
        return self._front_matter_text("name")

    @property
    def description(self) -> str:
        return self._front_matter_text("description")

    def _front_matter_text(self, key: str) -> str:
        data = _parse_front_matter(self.files.get(SKILL_FILE, "")).data
        value = data.get(key) if isinstance(data, dict) else None
        return value if isinstance(value, str) else ""

    @property
    def body(self) -> str:
        """SKILL.md after its front matter."""
        text = self.files.get(SKILL_FILE, "")
        parsed = _parse_front_matter(text)
        return "".join(text.splitlines(keepends=True)[parsed.body_start - 1 :])

    def sections(self, file: str = SKILL_FILE) -> list[Section]:
        """Headings `#` to `###` of a markdown file, in order (none inside fenced code)."""
        return list(_parse_sections(self.files.get(file, ""), file == SKILL_FILE))

    def find_section(self, title: str, file: str = SKILL_FILE) -> Section | None:
        """The first section whose title is exactly `title` (leading '#'s ignored)."""
        wanted = title.strip().lstrip("#").strip()
        for section in _parse_sections(self.files.get(file, ""), file == SKILL_FILE):
            if section.title == wanted:
                return section
        return None

    def section_text(self, title: str, file: str = SKILL_FILE) -> str:
        """A section's text, heading and subsections included."""
        section = self.find_section(title, file)
        if section is None:
            raise SkillError(f"section {title!r} not found in {file}")
        lines = self.files[file].splitlines(keepends=True)
        return "".join(lines[section.start_line - 1 : section.end_line])

    def references(self) -> list[str]:
        return sorted(path for path in self.files if path.startswith("references/"))

    def scripts(self) -> list[str]:
        return sorted(path for path in self.files if path.startswith("scripts/"))

    def links(self, file: str | None = None) -> list[Link]:
        """Relative markdown links in the skill's markdown files (or one file)."""
        files = [file] if file is not None else sorted(self.files)
        found = []
        for path in files:
            if path.endswith(".md") and path in self.files:
                found.extend(
                    Link(path, line, target, resolved)
                    for line, target, resolved in _parse_links(path, self.files[path])
                )
        return found

    def protected_patterns(self) -> list[str]:
        """scripts/** plus every path or glob listed in front matter `protected:`."""
        data = _parse_front_matter(self.files.get(SKILL_FILE, "")).data
        listed = (data.get("protected") if isinstance(data, dict) else None) or []
        if isinstance(listed, str):
            listed = [listed]
        extra = [item.strip() for item in listed if isinstance(item, str) and item.strip()]
        return list(ALWAYS_PROTECTED) + extra

    def is_protected(self, path: str, patterns: Iterable[str] | None = None) -> bool:
        return is_protected(path, self.protected_patterns() if patterns is None else patterns)


def is_protected(path: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        if pattern.endswith("/**"):
            if path.startswith(pattern[:-2]):
                return True
        elif fnmatch.fnmatchcase(path, pattern):
            return True
    return False


def line_count(text: str) -> int:
    return len(text.splitlines())


# -- the validator ------------------------------------------------------------------------


def validate_skill(
    skill: Skill, *, base: Skill | None = None, protected: Iterable[str] = ()
) -> list[Violation]:
    """Every broken format rule of `skill`, in file order.

    With `base`, also report changes to protected files (scripts/**, front matter `protected:`
    of either skill, and `protected`) and a changed front matter `name`.
    """
    violations: list[Violation] = []
    for path in sorted(skill.files, key=lambda p: (p != SKILL_FILE, p)):
        violations.extend(validate_file(skill, path))
    if SKILL_FILE not in skill.files:
        violations.insert(0, Violation(SKILL_FILE, 1, "SKILL.md is missing", "missing"))
    violations.extend(_link_violations(skill))
    if base is not None:
        violations.extend(_base_violations(skill, base, protected))
    return sorted(violations, key=lambda v: (v.file != SKILL_FILE, v.file, v.line))


def validate_file(skill: Skill, path: str) -> list[Violation]:
    """The rules that concern one file alone (everything but links and the base comparison)."""
    text = skill.files[path]
    found = []
    if path == SKILL_FILE:
        found.extend(_front_matter_violations(text))
        count = line_count(text)
        if count >= SKILL_LINE_LIMIT:
            found.append(Violation(path, SKILL_LINE_LIMIT, (
                f"SKILL.md has {count} lines; keep it under {SKILL_LINE_LIMIT} "
                "(move detail into references/)"), "length"))
    elif path.startswith("references/"):
        count = line_count(text)
        if count >= REFERENCE_LINE_LIMIT:
            found.append(Violation(path, REFERENCE_LINE_LIMIT, (
                f"{path} has {count} lines; keep each reference under {REFERENCE_LINE_LIMIT}"),
                "length"))
    found.extend(
        Violation(path, line, message, "conflict-marker")
        for line, message in _conflict_markers(text)
    )
    return found


def _front_matter_violations(text: str) -> list[Violation]:
    parsed = _parse_front_matter(text)
    if parsed.error:
        return [Violation(SKILL_FILE, parsed.error_line, parsed.error, "front-matter")]
    data = parsed.data
    found = []
    name = data.get("name")
    name_line = parsed.key_lines.get("name", 1)
    if name is None:
        found.append(Violation(SKILL_FILE, 1, "front matter has no 'name'", "name"))
    elif not isinstance(name, str) or not NAME_PATTERN.match(name):
        found.append(Violation(SKILL_FILE, name_line, (
            f"name {name!r} is not kebab-case (lowercase letters, digits and single hyphens)"),
            "name"))
    elif len(name) > MAX_NAME_CHARS:
        found.append(Violation(SKILL_FILE, name_line, (
            f"name has {len(name)} characters; the limit is {MAX_NAME_CHARS}"), "name"))
    description = data.get("description")
    description_line = parsed.key_lines.get("description", 1)
    if description is None:
        found.append(Violation(SKILL_FILE, 1, "front matter has no 'description'", "description"))
    elif not isinstance(description, str) or not description.strip():
        found.append(Violation(SKILL_FILE, description_line,
                               "description must be non-empty text", "description"))
    elif len(description) > MAX_DESCRIPTION_CHARS:
        found.append(Violation(SKILL_FILE, description_line, (
            f"description has {len(description)} characters; the limit is "
            f"{MAX_DESCRIPTION_CHARS}"), "description"))
    return found


def _link_violations(skill: Skill) -> list[Violation]:
    return [
        Violation(link.file, link.line,
                  f"link to {link.target!r} does not resolve to a file of the skill", "link")
        for link in skill.links()
        if link.path not in skill.files
    ]


def _base_violations(skill: Skill, base: Skill, extra: Iterable[str]) -> list[Violation]:
    patterns = set(base.protected_patterns()) | set(skill.protected_patterns()) | set(extra)
    found = []
    for path in sorted(set(skill.files) | set(base.files)):
        if is_protected(path, patterns) and skill.files.get(path) != base.files.get(path):
            change = ("removed" if path not in skill.files
                      else "added" if path not in base.files else "changed")
            found.append(Violation(path, 1, f"protected file {path} was {change}", "protected"))
    if base.name and skill.name != base.name:
        found.append(Violation(SKILL_FILE, 1, (
            f"name changed from {base.name!r} to {skill.name!r}; a skill keeps its name"),
            "name-changed"))
    return found


# -- parsing (cached by text) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _FrontMatter:
    data: Any
    body_start: int  # 1-based line where the markdown body begins
    key_lines: dict
    error: str = ""
    error_line: int = 1


@functools.lru_cache(maxsize=4096)
def _parse_front_matter(text: str) -> _FrontMatter:
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return _FrontMatter({}, 1, {}, "SKILL.md must start with YAML front matter ('---' line)")
    for index in range(1, len(lines)):
        if lines[index].strip() in ("---", "..."):
            break
    else:
        return _FrontMatter({}, 1, {}, "front matter is not closed by a '---' line")
    block = "\n".join(lines[1:index])
    try:
        data = yaml.load(block, Loader=_YAML_LOADER)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 2 if mark is not None else 1
        problem = getattr(error, "problem", None) or "invalid YAML"
        return _FrontMatter({}, index + 2, {}, f"front matter is not valid YAML: {problem}", line)
    if not isinstance(data, dict):
        return _FrontMatter({}, index + 2, {}, "front matter must be a YAML mapping of keys")
    key_lines = {}
    for number, line in enumerate(lines[1:index], start=2):
        match = re.match(r"^([A-Za-z_][\w-]*)\s*:", line)
        if match and match.group(1) not in key_lines:
            key_lines[match.group(1)] = number
    return _FrontMatter(data, index + 2, key_lines)


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _markdown_lines(text: str, front_matter: bool) -> Iterable[tuple[int, str, bool]]:
    """(1-based line number, line, inside fenced code) for the markdown body of a file.

    Only SKILL.md has front matter; elsewhere a leading '---' is a horizontal rule.
    """
    lines = text.splitlines()
    start = 0
    if front_matter and lines and lines[0].strip() == "---":
        for index in range(1, len(lines)):
            if lines[index].strip() in ("---", "..."):
                start = index + 1
                break
    fence = ""
    for index in range(start, len(lines)):
        line = lines[index]
        match = _FENCE.match(line)
        if fence:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
                    and not line.strip()[len(match.group(1)):].strip():
                fence = ""
            yield index + 1, line, True
        elif match:
            fence = match.group(1)
            yield index + 1, line, True
        else:
            yield index + 1, line, False


@functools.lru_cache(maxsize=4096)
def _parse_sections(text: str, front_matter: bool) -> tuple[Section, ...]:
    headings = []
    for number, line, in_code in _markdown_lines(text, front_matter):
        if not in_code:
            match = _HEADING.match(line)
            if match:
                headings.append((match.group(2).strip(), len(match.group(1)), number))
    total = line_count(text)
    sections = []
    for position, (title, level, start) in enumerate(headings):
        end = total
        for _, other_level, other_start in headings[position + 1 :]:
            if other_level <= level:
                end = other_start - 1
                break
        sections.append(Section(title, level, start, end))
    return tuple(sections)


@functools.lru_cache(maxsize=4096)
def _parse_links(path: str, text: str) -> tuple[tuple[int, str, str], ...]:
    found = []
    directory = posixpath.dirname(path)
    for number, line, in_code in _markdown_lines(text, path == SKILL_FILE):
        if in_code:
            continue
        if "](" not in line and "]:" not in line:
            continue
        visible = _INLINE_CODE.sub("", line)
        targets = [m.group(1) for m in _INLINE_LINK.finditer(visible)]
        definition = _REFERENCE_DEFINITION.match(visible)
        if definition:
            targets.append(definition.group(1))
        for target in targets:
            relative = unquote(target.split("#", 1)[0].split("?", 1)[0])
            if not relative or _SCHEME.match(target) or target.startswith(("/", "#")):
                continue
            resolved = posixpath.normpath(posixpath.join(directory, relative))
            found.append((number, target, resolved))
    return tuple(found)


def _conflict_markers(text: str) -> list[tuple[int, str]]:
    if "<<<<<<<" not in text and ">>>>>>>" not in text:
        return []
    found = []
    open_at = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("<<<<<<<"):
            open_at = number
            found.append((number, "merge-conflict marker '<<<<<<<'"))
        elif line.startswith(">>>>>>>"):
            open_at = 0
            found.append((number, "merge-conflict marker '>>>>>>>'"))
        elif open_at and (line.rstrip() == "=======" or line.startswith("|||||||")):
            found.append((number, f"merge-conflict marker {line[:7]!r}"))
    return found


# -- directories ------------------------------------------------------------------------------


def _walk(root: Path) -> list[str]:
    """Relative POSIX paths of the files under `root`, skipping hidden entries and caches."""
    found = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(
            d for d in subdirectories if not d.startswith(".") and d != "__pycache__"
        )
        for file in sorted(files):
            if not file.startswith("."):
                found.append(Path(directory, file).relative_to(root).as_posix())
    return found


def _in_layout(relative: str) -> bool:
    return relative == SKILL_FILE or relative.split("/", 1)[0] in SKILL_DIRS


def _remove_empty_dirs(directory: Path) -> None:
    if not directory.is_dir():
        return
    for child in directory.iterdir():
        if child.is_dir() and not child.name.startswith("."):
            _remove_empty_dirs(child)
    if not any(directory.iterdir()):
        directory.rmdir()


def load_skill(target: str | None, repo_path: Path | str = "skills_repo") -> tuple[Skill, str]:
    """The skill `target` names, and a label for messages.

    `target` is a skill directory or a ref of the skills repository at `repo_path`; when it is
    None, the repository's main if the repository exists, else the current directory.
    """
    repo_path = Path(repo_path)
    if target is None:
        if not repo_path.is_dir():
            return Skill.from_dir("."), "."
        target = "main"
    elif Path(target).is_dir():
        return Skill.from_dir(target), target
    elif not repo_path.is_dir():
        raise SkillError(
            f"{target} is not a skill directory, and there is no skills repository at "
            f"{repo_path} to look it up as a ref (use --repo)"
        )
    from t2s.repo import SkillsRepo  # the repository module builds on this one

    return SkillsRepo.open(repo_path).read_skill(target), f"{repo_path}@{target}"
