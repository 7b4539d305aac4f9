"""Task suites in the SpreadsheetBench layout, and deterministic train/test splits.

A suite is a directory holding `dataset.json` (a list of tasks) and one workbook folder per
task. Three namings of the workbooks are in use and all are read:

- `<n>_<id>_input.xlsx` / `<n>_<id>_answer.xlsx`, up to three test cases (the full release and
  the suite t2s ships);
- `1_<id>_init.xlsx` / `1_<id>_golden.xlsx` (SpreadsheetBench-Verified);
- bare `initial.xlsx` / `golden.xlsx`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from t2s.errors import TaskError

BUNDLED_SUITE = "bundled"
BUNDLED_DIR = Path(__file__).resolve().parent / "suites" / "bundled"

CELL_LEVEL = "Cell-Level Manipulation"
SHEET_LEVEL = "Sheet-Level Manipulation"

_NUMBERED = re.compile(r"^(\d+)_(.+)_(input|answer|init|golden)\.xlsx$")


@dataclass(frozen=True)
class TestCase:
    """One input workbook the agent starts from and the gold workbook it is judged against."""

    __test__ = False  # not a pytest class, despite the name

    name: str
    input_path: Path
    answer_path: Path

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "input_path": str(self.input_path),
            "answer_path": str(self.answer_path),
        }

    @classmethod
    def from_dict(cls, data: dict) -> TestCase:
        return cls(data["name"], Path(data["input_path"]), Path(data["answer_path"]))


@dataclass(frozen=True)
class Task:
    id: str
    instruction: str
    instruction_type: str
    answer_position: str
    answer_sheet: str | None
    data_position: str | None
    kind: str
    cases: tuple[TestCase, ...]
    suite: str = ""

    @property
    def is_sheet_level(self) -> bool:
        return "sheet" in self.instruction_type.lower()

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "instruction": self.instruction,
            "instruction_type": self.instruction_type,
            "answer_position": self.answer_position,
            "answer_sheet": self.answer_sheet,
            "data_position": self.data_position,
            "kind": self.kind,
            "cases": [case.to_dict() for case in self.cases],
            "suite": self.suite,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Task:
        return cls(
            id=data["id"],
            instruction=data["instruction"],
            instruction_type=data["instruction_type"],
            answer_position=data["answer_position"],
            answer_sheet=data.get("answer_sheet"),
            data_position=data.get("data_position"),
            kind=data["kind"],
            cases=tuple(TestCase.from_dict(case) for case in data["cases"]),
            suite=data.get("suite", ""),
        )


@dataclass
class Suite:
    name: str
    path: Path
    tasks: list[Task] = field(default_factory=list)

    def kinds(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for task in self.tasks:
            counts[task.kind] = counts.get(task.kind, 0) + 1
        return dict(sorted(counts.items()))


def load_suite(name_or_path: str | Path) -> Suite:
    """`"bundled"` is the suite shipped with t2s; anything else is a suite directory."""
    if str(name_or_path) == BUNDLED_SUITE:
        path, name = BUNDLED_DIR, BUNDLED_SUITE
        if not (path / "dataset.json").is_file():
            raise TaskError(f"the bundled suite is missing at {path}: run `python -m t2s.suitegen`")
    else:
        path = Path(name_or_path).expanduser()
        name = path.resolve().name
        if not path.is_dir():
            raise TaskError(
                f"task suite {str(name_or_path)!r} not found: give `bundled` or a directory "
                "holding dataset.json and spreadsheet/"
            )
    entries = _read_dataset(path / "dataset.json")
    tasks = [_task_from_entry(entry, index, path, name) for index, entry in enumerate(entries)]
    seen: set[str] = set()
    for task in tasks:
        if task.id in seen:
            raise TaskError(f"{path / 'dataset.json'}: task id {task.id!r} appears twice")
        seen.add(task.id)
    return Suite(name=name, path=path, tasks=tasks)


def get_task(suite: Suite, task_id: str) -> Task:
    for task in suite.tasks:
        if task.id == task_id:
            return task
    raise TaskError(
        f"no task {task_id!r} in suite {suite.name!r}: see `t2s tasks list {suite.name}`"
    )


def split_tasks(tasks: list[Task], which: str, ratio: float = 0.5) -> list[Task]:
    """The train or test share of `tasks`, decided by a hash of each id (stable as suites grow)."""
    if which not in ("train", "test", "all"):
        raise TaskError(f"unknown split {which!r}: use train, test or all")
    if not 0.0 <= ratio <= 1.0:
        raise TaskError(f"split ratio {ratio} is out of range: give a number between 0 and 1")
    if which == "all":
        return list(tasks)
    want_train = which == "train"
    return [task for task in tasks if (_split_point(task.id) < ratio) == want_train]


def _split_point(task_id: str) -> float:
    digest = hashlib.sha256(task_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _read_dataset(dataset_path: Path) -> list[dict]:
    if not dataset_path.is_file():
        raise TaskError(f"{dataset_path} is missing: a task suite needs a dataset.json")
    try:
        entries = json.loads(dataset_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TaskError(
            f"{dataset_path} is not valid JSON ({error}): fix or regenerate it"
        ) from None
    if not isinstance(entries, list):
        raise TaskError(f"{dataset_path} must hold a JSON list of tasks")
    return entries


def _task_from_entry(entry: object, index: int, suite_dir: Path, suite_name: str) -> Task:
    where = f"{suite_dir / 'dataset.json'}, task #{index + 1}"
    if not isinstance(entry, dict):
        raise TaskError(f"{where} is not a JSON object")
    for key in ("id", "instruction", "answer_position"):
        if entry.get(key) in (None, ""):
            raise TaskError(f"{where} has no {key!r}")
    task_id = str(entry["id"])
    instruction_type = str(entry.get("instruction_type") or CELL_LEVEL)
    kind = entry.get("kind") or (
        "sheet-level" if "sheet" in instruction_type.lower() else "cell-level"
    )
    folder = suite_dir / str(entry.get("spreadsheet_path") or f"spreadsheet/{task_id}")
    cases = _find_cases(folder, task_id)
    return Task(
        id=task_id,
        instruction=str(entry["instruction"]),
        instruction_type=instruction_type,
        answer_position=str(entry["answer_position"]),
        answer_sheet=_optional_text(entry.get("answer_sheet")),
        data_position=_optional_text(entry.get("data_position")),
        kind=str(kind),
        cases=cases,
        suite=suite_name,
    )


def _optional_text(value: object) -> str | None:
    return None if value in (None, "") else str(value)


def _find_cases(folder: Path, task_id: str) -> tuple[TestCase, ...]:
    if not folder.is_dir():
        raise TaskError(f"task {task_id!r}: workbook folder {folder} is missing")
    # Files are paired by case number, not by the id in their names: a few published tasks
    # carry a typo in one of the two names (e.g. 1_42930_init.xlsx with 1_43930_golden.xlsx).
    inputs: dict[str, Path] = {}
    answers: dict[str, Path] = {}
    for path in sorted(folder.iterdir(), key=lambda p: (_NUMBERED.match(p.name) is None, p.name)):
        match = _NUMBERED.match(path.name)
        if not match:
            continue
        number, stem, role = match.groups()
        target = inputs if role in ("input", "init") else answers
        if number not in target or stem == task_id:
            target[number] = path
    cases = [
        TestCase(number, inputs[number], answers[number])
        for number in sorted(inputs, key=int)
        if number in answers
    ]
    if not cases and (folder / "initial.xlsx").is_file() and (folder / "golden.xlsx").is_file():
        cases.append(TestCase("1", folder / "initial.xlsx", folder / "golden.xlsx"))
    if not cases:
        raise TaskError(
            f"task {task_id!r}: no input/answer workbook pair in {folder} "
            "(expected <n>_<id>_input.xlsx + <n>_<id>_answer.xlsx, 1_<id>_init.xlsx + "
            "1_<id>_golden.xlsx, or initial.xlsx + golden.xlsx)"
        )
    return tuple(cases)


@dataclass
class SheetPreview:
    title: str
    max_row: int
    max_column: int
    rows: list[list[object]]  # the first rows, cut to the first columns


def preview_workbook(path: Path, rows: int = 6, columns: int = 8) -> list[SheetPreview]:
    """The first rows of every sheet of a workbook, to show a person what a task starts from."""
    import openpyxl  # only the previews need it; listing a suite stays light

    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise TaskError(f"workbook {path} cannot be read: {error}") from None
    try:
        previews = []
        for sheet in workbook.worksheets:
            width = min(columns, sheet.max_column or columns)
            shown = [
                list(values)
                for values in sheet.iter_rows(max_row=rows, max_col=width, values_only=True)
            ]
            previews.append(
                SheetPreview(sheet.title, sheet.max_row or 0, sheet.max_column or 0, shown)
            )
        return previews
    finally:
        workbook.close()
