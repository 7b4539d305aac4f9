"""The rules-based git merge driver for skill markdown: `python -m t2s.mergedriver %O %A %B %L %P`.

`SkillsRepo.init` registers it for `*.md` (`.gitattributes`: `*.md merge=t2s-skill`), so both
t2s's own consolidation and a person's plain `git merge` resolve overlapping skill edits by the
same rules. Git finds the overlaps (it only calls a driver for files both sides changed); the
driver settles them line by line against the merge base O:

1. Each side's changes against O are hunks (difflib on lines). Hunks of the two sides that touch
   the same base lines (or are insertions at the same base position) form one region; hunks
   that only touch end to end do not overlap and are both applied.
2. A region both sides changed the same way (whitespace, case and list markers aside) collapses.
3. A region where both sides only insert (the same anchor) keeps every inserted block once,
   the best supported first (ties: ours first).
4. A region of competing replacements goes to the side more patches support.
5. A tie is either broken for ours (plain git, and t2s's rules-only merges, so the result is
   always conflict-free) or, when a support map is given without `T2S_MERGE_TIES=ours`, left as
   an open conflict with standard markers and exit status 1, for the merge operator.

A *block* is a unit of guidance: a list item (with its indented continuation), a paragraph, or
a whole section when it starts with a heading. Its support is the number of patches that
proposed it, read from the map named by `T2S_SUPPORT_FILE`: one `<count> <key>` per line (keys
from `block_key`; a deletion is keyed by `deletion_key` of the deleted text), or a JSON object
{key: count}. Without a map every block has support 1. When `T2S_CONFLICT_LOG` names a file, every tie the rules could not settle
by support is appended to it as one JSON line, so the caller can show it to the operator.

This module imports only light parts of the standard library and nothing else from t2s: git
starts it once per file per merge, so start-up time matters: hashlib would load OpenSSL,
dataclasses inspect, re and json enum and functools, each costing more than a typical merge.
Hence the plain classes, string tests instead of regular expressions, and a line-based map.
"""

from __future__ import annotations

import os
import sys

try:
    from _blake2 import blake2b  # CPython's built-in module, without OpenSSL
except ImportError:  # pragma: no cover - other Pythons
    from hashlib import blake2b

SUPPORT_ENV = "T2S_SUPPORT_FILE"
TIES_ENV = "T2S_MERGE_TIES"  # "ours" or "conflict"
CONFLICT_LOG_ENV = "T2S_CONFLICT_LOG"
# Beyond this many differing lines, difflib (slower to import, faster on big rewrites) diffs.
MAX_MYERS_EDITS = 200


def _marker_end(line: str) -> int:
    """Where the text after a list marker (`- `, `* `, `+ `, `1. `, `1) `) starts; 0 if none."""
    if line[:1] in ("-", "*", "+"):
        end = 1
    else:
        end = len(line) - len(line.lstrip("0123456789"))
        if not end or line[end : end + 1] not in (".", ")"):
            return 0
        end += 1
    return end + 1 if line[end : end + 1] in (" ", "\t") else 0


def _is_heading(line: str) -> bool:
    hashes = len(line) - len(line.lstrip("#"))
    return 1 <= hashes <= 6 and line[hashes : hashes + 1] in (" ", "\t")


def normalize(text: str) -> str:
    """The comparable form of some guidance: no list markers, case or runs of whitespace."""
    lines = (line.strip() for line in text.splitlines())
    lines = (line[_marker_end(line) :].strip() for line in lines)
    return "\n".join(" ".join(line.lower().split()) for line in lines if line)


def block_key(text: str) -> str:
    return blake2b(normalize(text).encode("utf-8"), digest_size=10).hexdigest()


def deletion_key(deleted_text: str) -> str:
    return "del:" + block_key(deleted_text)


def _heading_index(block: list[str]) -> int | None:
    """The index of the heading a section block starts with (after blank lines), else None."""
    for index, line in enumerate(block):
        if line.strip():
            return index if _is_heading(line) else None
    return None


def split_blocks(lines: list[str]) -> list[list[str]]:
    """Cut inserted lines into blocks; blank lines stay with the block before them."""
    blocks: list[list[str]] = []
    current: list[str] = []
    previous_blank = True
    in_section = False
    for line in lines:
        blank = not line.strip()
        heading = _is_heading(line)
        starts = not blank and (heading or (not in_section and (previous_blank or _marker_end(line) > 0)))
        if starts and any(existing.strip() for existing in current):
            blocks.append(current)
            current = []
        if heading:
            in_section = True
        current.append(line)
        previous_blank = blank
    if current:
        blocks.append(current)
    return blocks


def hunk_blocks(base_lines: list[str], new_lines: list[str]) -> list[tuple[str, str]]:
    """(support key, text) of each block one change brings; a pure deletion is one block."""
    if any(line.strip() for line in new_lines):
        return [(block_key(text), text) for text in map("".join, split_blocks(new_lines))]
    if any(line.strip() for line in base_lines):
        deleted = "".join(base_lines)
        return [(deletion_key(deleted), deleted)]
    return []


def hunk_keys(base_lines: list[str], new_lines: list[str]) -> list[str]:
    return [key for key, _text in hunk_blocks(base_lines, new_lines)]


def diff_hunks(base: list[str], side: list[str]) -> list[tuple[int, int, list[str]]]:
    """(start, end, new lines) for each change of `side` against `base`, in order."""
    prefix = 0
    limit = min(len(base), len(side))
    while prefix < limit and base[prefix] == side[prefix]:
        prefix += 1
    suffix = 0
    while suffix < limit - prefix and base[-1 - suffix] == side[-1 - suffix]:
        suffix += 1
    base_middle = base[prefix : len(base) - suffix]
    side_middle = side[prefix : len(side) - suffix]
    if not base_middle and not side_middle:
        return []
    if not base_middle or not side_middle:
        return [(prefix, len(base) - suffix, side_middle)]
    matches = _myers_matches(base_middle, side_middle, MAX_MYERS_EDITS)
    if matches is None:
        from difflib import SequenceMatcher

        blocks = SequenceMatcher(None, base_middle, side_middle, autojunk=False).get_matching_blocks()
        matches = [(i + offset, j + offset) for i, j, size in blocks for offset in range(size)]
    hunks = []
    base_at = side_at = 0
    for i, j in matches + [(len(base_middle), len(side_middle))]:
        if i > base_at or j > side_at:
            hunks.append((prefix + base_at, prefix + i, side_middle[side_at:j]))
        base_at, side_at = i + 1, j + 1
    return hunks


def _myers_matches(a: list[str], b: list[str], max_edits: int) -> list[tuple[int, int]] | None:
    """Matched (i, j) line pairs of a shortest edit script (Myers 1986); None past max_edits."""
    n, m = len(a), len(b)
    furthest = {1: 0}  # diagonal k = x - y -> furthest x reached
    trace = []
    for d in range(min(n + m, max_edits) + 1):
        trace.append(dict(furthest))
        for k in range(-d, d + 1, 2):
            if k == -d or (k != d and furthest[k - 1] < furthest[k + 1]):
                x = furthest[k + 1]
            else:
                x = furthest[k - 1] + 1
            y = x - k
            while x < n and y < m and a[x] == b[y]:
                x, y = x + 1, y + 1
            furthest[k] = x
            if x >= n and y >= m:
                return _backtrack(trace, n, m)
    return None


def _backtrack(trace: list[dict[int, int]], x: int, y: int) -> list[tuple[int, int]]:
    matches = []
    for d in range(len(trace) - 1, -1, -1):
        furthest = trace[d]
        k = x - y
        if k == -d or (k != d and furthest[k - 1] < furthest[k + 1]):
            previous_k = k + 1
        else:
            previous_k = k - 1
        previous_x = furthest[previous_k]
        previous_y = previous_x - previous_k
        while x > previous_x and y > previous_y:
            x, y = x - 1, y - 1
            matches.append((x, y))
        if d > 0:
            x, y = previous_x, previous_y
    matches.reverse()
    return matches


class Conflict:
    """A region the rules could not settle by support."""

    FIELDS = ("base", "ours", "theirs", "ours_support", "theirs_support", "resolution")

    def __init__(self, base, ours, theirs, ours_support, theirs_support, resolution):
        self.base, self.ours, self.theirs = base, ours, theirs
        self.ours_support, self.theirs_support = ours_support, theirs_support
        self.resolution = resolution  # "ours" (tie broken) or "open" (markers left in the text)

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.FIELDS}

    def __eq__(self, other) -> bool:
        return isinstance(other, Conflict) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Conflict({self.to_dict()!r})"


class MergeOutcome:
    def __init__(self, text: str, conflicts: list[Conflict]):
        self.text = text
        self.conflicts = conflicts

    @property
    def open(self) -> bool:
        return any(conflict.resolution == "open" for conflict in self.conflicts)


class _Region:
    """Base lines [start, end) and the hunks of each side that touch them."""

    def __init__(self, start: int, end: int):
        self.start, self.end = start, end
        self.hunks: dict[str, list[tuple[int, int, list[str]]]] = {"ours": [], "theirs": []}

    def overlaps(self, start: int, end: int) -> bool:
        if start == end == self.start == self.end:
            return True  # two insertions at the same anchor
        return start < self.end and self.start < end


def _apply(base: list[str], start: int, end: int, hunks) -> list[str]:
    out: list[str] = []
    position = start
    for hunk_start, hunk_end, new_lines in hunks:
        out.extend(base[position:hunk_start])
        out.extend(new_lines)
        position = hunk_end
    out.extend(base[position:end])
    return out


def split_lines(text: str) -> list[str]:
    """Lines with their endings; a missing final newline is added so every line compares alike."""
    if text and not text.endswith("\n"):
        text += "\n"
    return text.splitlines(keepends=True)


class _Merger:
    def __init__(self, support: dict[str, int] | None, ties: str, marker_size: int):
        self.support = support or {}
        self.ties = ties
        self.marker_size = marker_size
        self.conflicts: list[Conflict] = []

    def block_support(self, block: list[str]) -> int:
        return self.support.get(block_key("".join(block)), 1)

    def side_support(self, base: list[str], hunks) -> int:
        keys = [key for start, end, new in hunks for key in hunk_keys(base[start:end], new)]
        return max((self.support.get(key, 1) for key in keys), default=1)

    def resolve(self, base: list[str], region: _Region) -> list[str]:
        ours_hunks, theirs_hunks = region.hunks["ours"], region.hunks["theirs"]
        ours = _apply(base, region.start, region.end, ours_hunks)
        theirs = _apply(base, region.start, region.end, theirs_hunks)
        if not theirs_hunks or ours == theirs:
            return ours
        if not ours_hunks:
            return theirs
        if normalize("".join(ours)) == normalize("".join(theirs)):
            return ours  # the same edit, written slightly differently
        if region.start == region.end:
            return self.union(ours, theirs)
        ours_support = self.side_support(base, ours_hunks)
        theirs_support = self.side_support(base, theirs_hunks)
        if ours_support != theirs_support:
            return ours if ours_support > theirs_support else theirs
        conflict = Conflict(
            "".join(base[region.start : region.end]),
            "".join(ours),
            "".join(theirs),
            ours_support,
            theirs_support,
            "ours" if self.ties == "ours" else "open",
        )
        self.conflicts.append(conflict)
        if conflict.resolution == "ours":
            return ours
        return [
            "<" * self.marker_size + f" ours (support {ours_support})\n",
            *ours,
            "=" * self.marker_size + "\n",
            *theirs,
            ">" * self.marker_size + f" theirs (support {theirs_support})\n",
        ]

    def union(self, ours: list[str], theirs: list[str]) -> list[str]:
        """Every block both insertions bring, once each, the best supported first.

        Two new sections with the same heading become one section holding both bodies.
        """
        seen: dict[str, int] = {}  # normalised block or heading -> index in `blocks`
        blocks: list[list] = []  # [-support, position, lines]
        for block in split_blocks(ours) + split_blocks(theirs):
            key = normalize("".join(block))
            if key in seen:
                continue
            heading = _heading_index(block)
            title = "#" + normalize(block[heading]) if heading is not None else None
            if title in seen:
                entry = blocks[seen[title]]
                cut = _heading_index(entry[2]) + 1
                entry[2] = entry[2][:cut] + self.union(entry[2][cut:], block[heading + 1 :])
                entry[0] = min(entry[0], -self.block_support(block))
                continue
            seen[key] = len(blocks)
            if title is not None:
                seen[title] = len(blocks)
            blocks.append([-self.block_support(block), len(blocks), block])
        blocks.sort(key=lambda item: item[:2])
        merged = [line for _, _, block in blocks for line in block]
        if merged and not merged[-1].endswith("\n"):
            merged[-1] += "\n"
        return merged

    def merge(self, base_text: str, ours_text: str, theirs_text: str) -> str:
        base = split_lines(base_text)
        hunks = [(s, e, new, "ours") for s, e, new in diff_hunks(base, split_lines(ours_text))]
        hunks += [(s, e, new, "theirs") for s, e, new in diff_hunks(base, split_lines(theirs_text))]
        hunks.sort(key=lambda hunk: (hunk[0], hunk[1], hunk[3]))
        regions: list[_Region] = []
        for start, end, new_lines, side in hunks:
            if not regions or not regions[-1].overlaps(start, end):
                regions.append(_Region(start, end))
            region = regions[-1]
            region.start, region.end = min(region.start, start), max(region.end, end)
            region.hunks[side].append((start, end, new_lines))
        out: list[str] = []
        position = 0
        for region in regions:
            out.extend(base[position : region.start])
            out.extend(self.resolve(base, region))
            position = region.end
        out.extend(base[position:])
        return "".join(out)


def merge_texts(
    base: str,
    ours: str,
    theirs: str,
    *,
    support: dict[str, int] | None = None,
    ties: str = "ours",
    marker_size: int = 7,
) -> MergeOutcome:
    """Merge two edits of `base` by the rules above; `ties` is "ours" or "conflict"."""
    if ties not in ("ours", "conflict"):
        raise ValueError(f"ties must be 'ours' or 'conflict', not {ties!r}")
    merger = _Merger(support, ties, marker_size)
    text = merger.merge(base, ours, theirs)
    return MergeOutcome(text, merger.conflicts)


def load_support(path: str | None) -> dict[str, int] | None:
    """The support map in `path`: `<count> <key>` lines, or JSON {key: count}."""
    if not path:
        return None
    with open(path, encoding="utf-8") as stream:
        text = stream.read()
    if text.lstrip().startswith("{"):
        import json

        return {str(key): int(value) for key, value in json.loads(text).items()}
    support = {}
    for line in text.splitlines():
        count, _, key = line.strip().partition(" ")
        if key:
            support[key] = int(count)
    return support


def write_support(path, support: dict[str, int]) -> None:
    """Write a support map the way `load_support` reads it fastest."""
    with open(path, "w", encoding="utf-8") as stream:
        stream.write("".join(f"{count} {key}\n" for key, count in support.items()))


def _read(path: str) -> str:
    with open(path, "rb") as stream:
        return stream.read().decode("utf-8")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3:
        print("usage: python -m t2s.mergedriver BASE OURS THEIRS [MARKER_SIZE [PATH]]", file=sys.stderr)
        return 2
    base_path, ours_path, theirs_path = args[:3]
    marker_size = int(args[3]) if len(args) > 3 and args[3].isdigit() else 7
    path = args[4] if len(args) > 4 else ours_path
    try:
        base, ours, theirs = _read(base_path), _read(ours_path), _read(theirs_path)
    except UnicodeDecodeError:
        print(f"t2s merge driver: {path} is not UTF-8 text; left for you to merge", file=sys.stderr)
        return 1
    try:
        support = load_support(os.environ.get(SUPPORT_ENV))
    except (OSError, ValueError, TypeError, KeyError) as error:
        print(
            f"t2s merge driver: cannot read the support map {os.environ.get(SUPPORT_ENV)} "
            f"({error}); every block counts as supported once",
            file=sys.stderr,
        )
        support = None
    ties = os.environ.get(TIES_ENV) or ("conflict" if support is not None else "ours")
    outcome = merge_texts(base, ours, theirs, support=support, ties=ties, marker_size=marker_size)
    with open(ours_path, "wb") as stream:
        stream.write(outcome.text.encode("utf-8"))
    log_path = os.environ.get(CONFLICT_LOG_ENV)
    settled = sum(1 for conflict in outcome.conflicts if conflict.resolution == "ours")
    if settled and not log_path:
        print(f"t2s merge driver: {path}: {settled} competing edit(s) had equal support; "
              "kept ours", file=sys.stderr)
    if log_path and outcome.conflicts:
        import json

        with open(log_path, "a", encoding="utf-8") as stream:
            for conflict in outcome.conflicts:
                record = {"path": path, **conflict.to_dict()}
                stream.write(json.dumps(record, ensure_ascii=False) + "\n")
    return 1 if outcome.open else 0


if __name__ == "__main__":
    sys.exit(main())
