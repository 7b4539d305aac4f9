"""The SpreadsheetBench checker: compare an output workbook with gold, cell by cell.

Rules (DESIGN.md section 3, after SpreadsheetBench's own evaluation script): every cell of
`answer_position` is compared after normalising both sides: numbers, and strings that parse as
numbers, become floats rounded to 2 decimals; datetimes become Excel serial days (rounded to
whole days, as SpreadsheetBench does); times become "HH:MM"; an empty string equals an empty
cell; anything else must match in type and value. Booleans stay booleans.

Gold workbooks are read with their cached values. An output written by openpyxl has formulas
but no cached values, so formulas in the answer region are evaluated first: by LibreOffice when
it is installed, otherwise by the `formulas` package, in a child process, on a copy whose formulas
are rewritten where the engine departs from Excel (`_FormulaRewriter`) and with the functions of
`t2s.excel_functions` added. A formula nobody could evaluate, or one that uses (or reads a cell
that uses) what the engine lacks, fails its cell with the reason; it never passes because both
sides happened to be empty, nor because IFERROR hid the engine's error.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import openpyxl
from openpyxl.utils import column_index_from_string, get_column_letter
from openpyxl.utils.cell import coordinate_from_string, range_boundaries
from openpyxl.worksheet.formula import ArrayFormula, DataTableFormula

from t2s.errors import TaskError
from t2s.formula_rewrite import AREA, MAX_COL, MAX_ROW, NUMBER, PreparedWorkbook, prepare_workbook
from t2s.tasks import Task, TestCase

MISMATCH_CAP = 50
LIBREOFFICE_TIMEOUT = 120
FORMULAS_TIMEOUT = 120
ENGINES = ("auto", "libreoffice", "formulas")

_EXCEL_EPOCH = dt.datetime(1899, 12, 30)
_REF = re.compile(r"^([A-Z]{0,3})(\d*)(?::([A-Z]{0,3})(\d*))?$")


class CellRange(NamedTuple):
    """A rectangle of one sheet; `max_col`/`max_row` None means "to the end of the used range"."""

    sheet: str | None
    min_col: int
    min_row: int
    max_col: int | None
    max_row: int | None


@dataclass
class Mismatch:
    sheet: str
    cell: str
    expected: Any
    got: Any
    formula: str | None = None  # the output's formula, when the cell held one

    def to_dict(self) -> dict:
        return {
            "sheet": self.sheet,
            "cell": self.cell,
            "expected": _jsonable(self.expected),
            "got": _jsonable(self.got),
            "formula": self.formula,
        }

    def describe(self) -> str:
        shown = f" (formula {self.formula})" if self.formula else ""
        return f"{self.sheet}!{self.cell}: expected {self.expected!r}, got {self.got!r}{shown}"


@dataclass
class CaseResult:
    case: str
    passed: bool
    mismatches: list[Mismatch] = field(default_factory=list)  # the first MISMATCH_CAP
    judge: str = "values"  # "values", "libreoffice" or "formulas"
    error: str | None = None
    mismatch_count: int = 0
    cells_checked: int = 0

    def to_dict(self) -> dict:
        return {
            "case": self.case,
            "passed": self.passed,
            "judge": self.judge,
            "error": self.error,
            "cells_checked": self.cells_checked,
            "mismatch_count": self.mismatch_count,
            "mismatches": [mismatch.to_dict() for mismatch in self.mismatches],
        }


@dataclass
class CheckResult:
    soft: float  # share of test cases passed
    hard: bool  # every test case passed
    judge: str
    cases: list[CaseResult]

    def to_dict(self) -> dict:
        return {
            "soft": self.soft,
            "hard": self.hard,
            "judge": self.judge,
            "cases": [case.to_dict() for case in self.cases],
        }


# --- answer_position ---------------------------------------------------------------------------


def parse_answer_position(text: str, default_sheet: str | None = None) -> list[CellRange]:
    """Every range of an answer_position such as `'Sales, 2024'!A2:A9,C2,'Bob''s'!B:B`.

    Handles several comma-separated ranges, quoted sheet names holding commas or `''`, the stray
    quotes real datasets contain (`Sheet1'!A1`, `'Sheet1!'A1`), `$` signs, non-breaking spaces,
    whole columns (`A:G`), whole rows (`2:5`) and a missing end column (`BD2:308`).
    """
    ranges = []
    for piece in _split_top_level(text.replace("\xa0", " ")):
        if not piece.strip():
            continue
        sheet, reference = _split_sheet(piece.strip())
        reference = re.sub(r"[\s$']", "", reference).upper()
        ranges.append(_parse_reference(reference, sheet or default_sheet, text))
    if not ranges:
        raise TaskError(f"answer_position {text!r} names no cells")
    return ranges


def _split_top_level(text: str) -> list[str]:
    """Split on commas, except inside a quoted sheet name that opens a piece."""
    pieces, current, quoted, at_start = [], [], False, True
    index = 0
    while index < len(text):
        char = text[index]
        if quoted:
            if char == "'" and text[index + 1 : index + 2] == "'":
                current.append("''")
                index += 2
                continue
            quoted = char != "'"
        elif char == ",":
            pieces.append("".join(current))
            current, at_start = [], True
            index += 1
            continue
        elif char == "'" and at_start:
            quoted = True
        if not char.isspace():
            at_start = False
        current.append(char)
        index += 1
    pieces.append("".join(current))
    return pieces


def _split_sheet(piece: str) -> tuple[str | None, str]:
    if piece.startswith("'"):
        name, rest = _read_quoted(piece)
        rest = rest.strip()
        if rest.startswith("!"):
            return name, rest[1:]
        if "!" in name:  # 'Sheet 1!'A1:B2, a quote in the wrong place
            sheet, head = name.rsplit("!", 1)
            return sheet, head + rest
        if "!" in rest:
            sheet, reference = rest.rsplit("!", 1)
            return (name + sheet).strip("'"), reference
        return None, name + rest
    if "!" in piece:
        sheet, reference = piece.rsplit("!", 1)
        return sheet.strip().strip("'"), reference
    return None, piece


def _read_quoted(piece: str) -> tuple[str, str]:
    """`'Bob''s data'!A1` -> ("Bob's data", "!A1"); an unclosed quote takes everything."""
    name, index = [], 1
    while index < len(piece):
        char = piece[index]
        if char == "'":
            if piece[index + 1 : index + 2] == "'":
                name.append("'")
                index += 2
                continue
            return "".join(name), piece[index + 1 :]
        name.append(char)
        index += 1
    return "".join(name), ""


def _parse_reference(reference: str, sheet: str | None, text: str) -> CellRange:
    match = _REF.match(reference)
    if not match or not reference:
        raise TaskError(f"answer_position {text!r}: cannot read the range {reference!r}")
    start_col, start_row, end_col, end_row = match.groups()
    is_range = ":" in reference
    if not is_range and not (start_col and start_row):
        raise TaskError(f"answer_position {text!r}: {reference!r} is not a cell")
    if is_range and not (start_col or start_row):
        raise TaskError(f"answer_position {text!r}: {reference!r} has no start")
    min_col = column_index_from_string(start_col) if start_col else 1
    min_row = int(start_row) if start_row else 1
    if not is_range:
        max_col, max_row = min_col, min_row
    else:
        if end_col:
            max_col = column_index_from_string(end_col)
        elif start_col and end_row:
            max_col = min_col  # BD2:308 means BD2:BD308
        else:
            max_col = None  # 2:5, a whole row
        max_row = int(end_row) if end_row else None  # A:G or A2:C, to the end of the data
    if max_col is not None and max_col < min_col:
        min_col, max_col = max_col, min_col
    if max_row is not None and max_row < min_row:
        min_row, max_row = max_row, min_row
    if min_row < 1 or (max_row or 1) > MAX_ROW or (max_col or 1) > MAX_COL:
        raise TaskError(f"answer_position {text!r}: {reference!r} is outside a worksheet")
    return CellRange(sheet, min_col, min_row, max_col, max_row)


# --- normalisation -----------------------------------------------------------------------------


def normalize(value: Any) -> Any:
    """The comparable form of a cell value under SpreadsheetBench's rules."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        number = float(value)
        return _two_decimals(number) if math.isfinite(number) else str(value)
    if isinstance(value, dt.datetime):
        return float(round(excel_serial(value)))
    if isinstance(value, dt.date):
        return float((value - _EXCEL_EPOCH.date()).days)
    if isinstance(value, dt.time):
        return f"{value.hour:02d}:{value.minute:02d}"
    if isinstance(value, dt.timedelta):
        return round(value.total_seconds() / 86400, 2)
    if isinstance(value, str) and NUMBER.match(value):
        return _two_decimals(float(value))
    return value


def _two_decimals(number: float) -> float:
    # Float noise first (8.024999999999999 is how Python computes Excel's 8.025), so that
    # two spellings of one value cannot round to different cents.
    return round(round(number, 9), 2)


def excel_serial(moment: dt.datetime) -> float:
    delta = moment.replace(tzinfo=None) - _EXCEL_EPOCH
    return delta.days + delta.seconds / 86400


def values_match(expected: Any, got: Any) -> bool:
    expected, got = normalize(expected), normalize(got)
    if expected in (None, "") and got in (None, ""):
        return True
    return type(expected) is type(got) and expected == got


# --- checking ----------------------------------------------------------------------------------


def check_task(task: Task, outputs: dict[str, Path], engine: str = "auto") -> CheckResult:
    """Judge one output workbook per test case; a case with no output fails."""
    results = []
    for case in task.cases:
        output = outputs.get(case.name)
        if output is None:
            results.append(
                CaseResult(case.name, False, error=f"no output for test case {case.name}")
            )
        else:
            results.append(check_case(task, case, Path(output), engine=engine))
    passed = sum(result.passed for result in results)
    evaluators = sorted({result.judge for result in results} - {"values"})
    return CheckResult(
        soft=passed / len(results) if results else 0.0,
        hard=bool(results) and passed == len(results),
        judge="+".join(evaluators) or "values",
        cases=results,
    )


def check_case(task: Task, case: TestCase, output_path: Path, engine: str = "auto") -> CaseResult:
    """Compare `output_path` with the case's gold workbook over the task's answer_position."""
    if engine not in ENGINES:
        raise TaskError(f"unknown formula engine {engine!r}: use one of {', '.join(ENGINES)}")
    output_path = Path(output_path)
    if not output_path.is_file():
        return CaseResult(case.name, False, error=f"output workbook {output_path} does not exist")
    try:
        gold = openpyxl.load_workbook(case.answer_path, data_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is a reason, not a crash
        return CaseResult(
            case.name, False, error=f"gold workbook {case.answer_path} cannot be read: {error}"
        )
    try:
        output = openpyxl.load_workbook(output_path, data_only=False)
    except Exception as error:  # noqa: BLE001
        return CaseResult(
            case.name, False, error=f"output workbook cannot be read: {_short(error)}"
        )
    try:
        areas = parse_answer_position(task.answer_position, _default_sheet(task, gold))
    except TaskError as error:
        return CaseResult(case.name, False, error=str(error))

    # (gold sheet title, output sheet title, coordinate, expected, got)
    cells: list[tuple[str, str, str, Any, Any]] = []
    formula_cells: dict[tuple[str, str], str] = {}  # (output sheet title, coordinate) -> formula
    covered: dict[str, dict[str, str]] = {}  # output sheet title -> _array_formula_cells
    for area in areas:
        gold_sheet = _find_sheet(gold, area.sheet)
        if gold_sheet is None:
            return CaseResult(case.name, False, error=f"gold workbook has no sheet {area.sheet!r}")
        output_sheet = _find_sheet(output, gold_sheet.title)
        if output_sheet is None:
            return CaseResult(
                case.name, False, error=f"output workbook has no sheet {gold_sheet.title!r}"
            )
        max_col = area.max_col or max(gold_sheet.max_column, output_sheet.max_column)
        max_row = area.max_row or max(gold_sheet.max_row, output_sheet.max_row)
        if output_sheet.title not in covered:
            covered[output_sheet.title] = _array_formula_cells(output_sheet)
        for row in range(area.min_row, max_row + 1):
            for col in range(area.min_col, max_col + 1):
                coordinate = f"{get_column_letter(col)}{row}"
                got = output_sheet.cell(row, col).value
                formula = _formula_text(got)
                if formula is None and got is None:
                    formula = covered[output_sheet.title].get(coordinate)
                if formula is not None:
                    formula_cells[(output_sheet.title, coordinate)] = formula
                expected = gold_sheet.cell(row, col).value
                cells.append((gold_sheet.title, output_sheet.title, coordinate, expected, got))

    judge = "values"
    computed: dict[tuple[str, str], Any] = {}
    if formula_cells:
        judge, computed = _formula_values(output_path, formula_cells, engine)

    mismatches: list[Mismatch] = []
    count = 0
    for sheet_title, output_title, coordinate, expected, got in cells:
        formula = formula_cells.get((output_title, coordinate))
        if formula is not None:
            got = computed[(output_title, coordinate)]
            ok = not isinstance(got, _Unevaluated) and values_match(expected, got)
        else:
            ok = values_match(expected, got)
        if not ok:
            count += 1
            if len(mismatches) < MISMATCH_CAP:
                shown = got.reason if isinstance(got, _Unevaluated) else got
                mismatches.append(Mismatch(sheet_title, coordinate, expected, shown, formula))
    return CaseResult(
        case.name,
        passed=count == 0,
        mismatches=mismatches,
        judge=judge,
        mismatch_count=count,
        cells_checked=len(cells),
    )


def _default_sheet(task: Task, gold) -> str:
    """The task's answer_sheet when it names one sheet of gold, else gold's first sheet."""
    if task.answer_sheet and _find_sheet(gold, task.answer_sheet) is not None:
        return _find_sheet(gold, task.answer_sheet).title
    return gold.sheetnames[0]


def _find_sheet(workbook, name: str | None):
    """Sheet names are case-insensitive in Excel, and datasets do not always match the case."""
    if name is None:
        return workbook.worksheets[0]
    if name in workbook.sheetnames:
        return workbook[name]
    folded = [title for title in workbook.sheetnames if title.casefold() == name.casefold()]
    return workbook[folded[0]] if len(folded) == 1 else None


def _formula_text(value: Any) -> str | None:
    if isinstance(value, str) and value.startswith("=") and len(value) > 1:
        return value
    if isinstance(value, ArrayFormula):
        return value.text
    if isinstance(value, DataTableFormula):
        return "=TABLE()"
    return None


def _array_formula_cells(sheet) -> dict[str, str]:
    """Coordinate -> formula for the cells an array formula covers besides its first: a file
    written by openpyxl leaves them empty, and the formula's result gives each its value."""
    covered = {}
    for anchor, reference in sheet.array_formulae.items():
        formula = _formula_text(sheet[anchor].value)
        if formula is None:
            continue
        min_col, min_row, max_col, max_row = range_boundaries(reference)
        for row in range(min_row, max_row + 1):
            for col in range(min_col, max_col + 1):
                coordinate = f"{get_column_letter(col)}{row}"
                if coordinate != anchor:
                    covered[coordinate] = formula
    return covered


def _short(error: Exception) -> str:
    return (str(error) or type(error).__name__).splitlines()[0][:200]


# --- formula evaluation ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Unevaluated:
    """Stands in for a formula's value when no engine could compute it."""

    reason: str


def _formula_values(
    output_path: Path, formula_cells: dict[tuple[str, str], str], engine: str
) -> tuple[str, dict[tuple[str, str], Any]]:
    """(judge, value of every formula cell) for the formulas found in the answer region."""
    # A workbook saved by a spreadsheet program carries every formula's result; one saved by
    # openpyxl (the agent's tools) carries none at all. So one cached result in the region means
    # the cache is real, and an empty one is an empty result, not a missing one.
    cached = openpyxl.load_workbook(output_path, data_only=True)
    values = {key: cached[key[0]][key[1]].value for key in formula_cells}
    if any(value is not None for value in values.values()):
        return "values", values

    reasons = []
    if engine in ("auto", "libreoffice"):
        office = libreoffice_binary()
        if office is not None:
            try:
                return "libreoffice", _evaluate_with_libreoffice(office, output_path, formula_cells)
            except _EvaluationFailed as failure:
                reasons.append(f"libreoffice: {failure}")
        elif engine == "libreoffice":
            reasons.append("libreoffice is not installed")
    if engine in ("auto", "formulas"):
        try:
            return "formulas", _evaluate_with_formulas(output_path, formula_cells)
        except _EvaluationFailed as failure:
            reasons.append(f"formulas: {failure}")
    judge = "libreoffice" if engine == "libreoffice" else "formulas"
    unevaluated = _Unevaluated("formula could not be evaluated (" + "; ".join(reasons) + ")")
    return judge, {key: unevaluated for key in formula_cells}


class _EvaluationFailed(Exception):
    pass


def libreoffice_binary() -> str | None:
    return shutil.which("soffice") or shutil.which("libreoffice")


# Asks LibreOffice to recalculate every formula of an OOXML file on load, whatever its
# defaults are, so a workbook written by openpyxl (formulas without results) gets its values.
_RECALC_ALWAYS = """<?xml version="1.0" encoding="UTF-8"?>
<oor:items xmlns:oor="http://openoffice.org/2001/registry"
 xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<item oor:path="/org.openoffice.Office.Calc/Formula/Load">
<prop oor:name="OOXMLRecalcMode" oor:op="fuse"><value>0</value></prop></item>
<item oor:path="/org.openoffice.Office.Calc/Formula/Load">
<prop oor:name="ODFRecalcMode" oor:op="fuse"><value>0</value></prop></item>
</oor:items>
"""


def _evaluate_with_libreoffice(
    office: str, output_path: Path, formula_cells: dict[tuple[str, str], str]
) -> dict[tuple[str, str], Any]:
    with tempfile.TemporaryDirectory(prefix="t2s-lo-") as scratch:
        scratch = Path(scratch)
        profile = scratch / "profile"
        (profile / "user").mkdir(parents=True)
        (profile / "user" / "registrymodifications.xcu").write_text(_RECALC_ALWAYS)
        source = scratch / "in" / "workbook.xlsx"
        source.parent.mkdir()
        shutil.copyfile(output_path, source)
        converted = scratch / "out"
        command = [
            office,
            f"-env:UserInstallation={profile.as_uri()}",
            "--headless",
            "--norestore",
            "--nologo",
            "--nodefault",
            "--nolockcheck",
            "--convert-to",
            "xlsx",
            "--outdir",
            str(converted),
            str(source),
        ]
        try:
            finished = subprocess.run(
                command,
                check=False,
                capture_output=True,
                timeout=LIBREOFFICE_TIMEOUT,
                env={**os.environ, "HOME": str(scratch)},
            )
        except subprocess.TimeoutExpired:
            raise _EvaluationFailed(f"timed out after {LIBREOFFICE_TIMEOUT}s") from None
        except OSError as error:
            raise _EvaluationFailed(_short(error)) from None
        result = converted / "workbook.xlsx"
        if finished.returncode != 0 or not result.is_file():
            detail = (finished.stderr or finished.stdout).decode(errors="replace").strip()
            raise _EvaluationFailed(
                f"conversion failed (exit {finished.returncode}) {detail[:200]}"
            )
        try:
            recalculated = openpyxl.load_workbook(result, data_only=True)
        except Exception as error:  # noqa: BLE001
            raise _EvaluationFailed(f"unreadable result: {_short(error)}") from None
        values = {}
        for sheet, coordinate in formula_cells:
            found = _find_sheet(recalculated, sheet)
            if found is None:
                raise _EvaluationFailed(f"sheet {sheet!r} lost in conversion")
            values[(sheet, coordinate)] = found[coordinate].value
        return values


def _evaluate_with_formulas(
    output_path: Path, formula_cells: dict[tuple[str, str], str]
) -> dict[tuple[str, str], Any]:
    """Run the engine in a child process: it can take minutes on a big workbook, so it gets a
    time limit, and whatever it does to memory stays out of the caller."""
    request = json.dumps({"path": str(output_path), "cells": list(formula_cells)})
    package_root = str(Path(__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            part for part in (package_root, os.environ.get("PYTHONPATH")) if part
        ),
    }
    try:
        finished = subprocess.run(
            [sys.executable, "-c", "from t2s.checker import _formulas_child; _formulas_child()"],
            input=request,
            capture_output=True,
            text=True,
            timeout=FORMULAS_TIMEOUT,
            check=False,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise _EvaluationFailed(f"timed out after {FORMULAS_TIMEOUT}s") from None
    try:
        reply = json.loads(finished.stdout)
    except json.JSONDecodeError:
        detail = finished.stderr.strip().splitlines()[-1:] or [f"exit {finished.returncode}"]
        raise _EvaluationFailed(f"the engine process failed: {detail[0][:200]}") from None
    if "error" in reply:
        raise _EvaluationFailed(reply["error"])
    return {
        (sheet, coordinate): _Unevaluated(value["unevaluated"])
        if isinstance(value, dict)
        else value
        for sheet, coordinate, value in reply["values"]
    }


def _formulas_child() -> None:
    """The engine process: a JSON request on stdin, the formula cells' values on stdout."""
    request = json.load(sys.stdin)
    cells = {(sheet, coordinate): "" for sheet, coordinate in request["cells"]}
    try:
        values = _evaluate_in_process(Path(request["path"]), cells)
    except _EvaluationFailed as failure:
        json.dump({"error": str(failure)}, sys.stdout)
        return
    reply = [
        [
            sheet,
            coordinate,
            {"unevaluated": value.reason} if isinstance(value, _Unevaluated) else value,
        ]
        for (sheet, coordinate), value in values.items()
    ]
    json.dump({"values": reply}, sys.stdout, default=str)


def _evaluate_in_process(
    output_path: Path, formula_cells: dict[tuple[str, str], str]
) -> dict[tuple[str, str], Any]:
    try:
        import formulas

        from t2s.excel_functions import register
    except ImportError as error:
        raise _EvaluationFailed(f"the formulas package is missing or too old: {error}") from None
    with tempfile.TemporaryDirectory(prefix="t2s-formulas-") as scratch:
        # A plain file name: the engine parses the path inside its range references.
        workbook = Path(scratch) / "workbook.xlsx"
        try:
            prepared = prepare_workbook(output_path, workbook)
        except Exception as error:  # noqa: BLE001
            raise _EvaluationFailed(f"cannot prepare the workbook: {_short(error)}") from None
        register(prepared.facts)
        try:
            # Build only the formula cells of the answer and what they depend on: on a large
            # workbook that is seconds instead of minutes. The engine draws progress bars on
            # stderr; keep the caller's output clean.
            with contextlib.redirect_stderr(io.StringIO()):
                ranges = _engine_ranges(workbook, formula_cells)
                model = formulas.ExcelModel().from_ranges(*ranges).finish()
                solution = model.calculate()
        except Exception as error:  # noqa: BLE001 - the engine fails in many ways on odd books
            raise _EvaluationFailed(_short(error)) from None
    by_cell = _solution_cells(solution)
    blocked = _blocked_cells(model, prepared)
    values = {}
    for sheet, coordinate in formula_cells:
        location = (sheet.upper(), coordinate)
        value = by_cell.get(location)
        if location in blocked:
            values[(sheet, coordinate)] = _Unevaluated(blocked[location])
        elif value is None:
            values[(sheet, coordinate)] = _Unevaluated(
                "formula not evaluated by formulas (self-reference, or a reference it cannot read)"
            )
        else:
            values[(sheet, coordinate)] = _plain_value(value)
    return values


def _solution_cells(solution) -> dict[tuple[str, str], Any]:
    """(SHEET, coordinate) -> engine value; the cells of an array formula's range get their
    element of its result."""
    by_cell, areas = {}, []
    for key, value in solution.items():
        location = _solution_location(str(key))
        if location is None:
            continue
        if ":" in location[1]:
            areas.append((location, value))
        else:
            by_cell[location] = value
    for (sheet, area), value in areas:
        values = getattr(value, "value", value)
        min_col, min_row, max_col, max_row = range_boundaries(area)
        if getattr(values, "shape", None) != (max_row - min_row + 1, max_col - min_col + 1):
            continue
        for row, line in enumerate(values):
            for col, item in enumerate(line):
                coordinate = f"{get_column_letter(min_col + col)}{min_row + row}"
                by_cell.setdefault((sheet, coordinate), item)
    return by_cell


_MISSING_NAME = re.compile(r"^'\[[^\]]*\]'!(.+)$")  # a name the engine found no definition for


def _blocked_cells(model, prepared: PreparedWorkbook) -> dict[tuple[str, str], str]:
    """(SHEET, coordinate) -> why its value cannot be trusted, for every cell that uses a
    function or a feature the engine lacks, and every cell computed from one: IFERROR would
    otherwise turn the engine's #NAME? into a plausible answer."""
    causes: dict[Any, tuple[str, tuple[str, str]]] = {}  # node -> (reason, the cell it is in)
    for node, cell in model.cells.items():
        location = _solution_location(str(node))
        if location is None:
            continue
        reason = prepared.unsupported.get(location) or _missing_input(
            cell, prepared.calls.get(location, frozenset())
        )
        if reason is not None:
            causes[node] = (reason, location)
    successors = model.dsp.dmap.succ
    stack = list(causes)
    while stack:
        node = stack.pop()
        for after in successors.get(node, ()):
            if after not in causes:
                causes[after] = causes[node]
                stack.append(after)
    blocked = {}
    for node, (reason, origin) in causes.items():
        location = _solution_location(str(node))
        if location is not None and ":" not in location[1]:
            where = "" if origin == location else f" (in {origin[0]}!{origin[1]})"
            blocked[location] = reason + where
    return blocked


def _missing_input(cell, calls: frozenset[str]) -> str | None:
    """The engine's note that a formula names a function or a name it does not know."""
    for key, names in (getattr(cell, "inputs", None) or {}).items():
        if not str(key).startswith("#"):  # missing names are filed under an error value
            continue
        for name in names:
            if missing := _MISSING_NAME.match(str(name)):
                name = missing[1].upper()
                shown = re.sub(r"^(_XLFN\.|_XLWS\.)+", "", name)
                if name in calls:
                    return (
                        f"{shown} is not supported by the formulas engine; "
                        "install LibreOffice to evaluate this formula"
                    )
                return f"the name {shown} is not defined, or the formulas engine cannot read it"
    return None


def _engine_ranges(workbook: Path, formula_cells: dict[tuple[str, str], str]) -> list[str]:
    """One range per sheet covering its formula cells, e.g. `'/tmp/x/[workbook.xlsx]Data'!B2:C9`."""
    bounds: dict[str, list[int]] = {}
    for sheet, coordinate in formula_cells:
        col, row = coordinate_from_string(coordinate)
        col = column_index_from_string(col)
        box = bounds.setdefault(sheet, [col, row, col, row])
        box[:] = [min(box[0], col), min(box[1], row), max(box[2], col), max(box[3], row)]
    prefix = f"{workbook.parent}/[{workbook.name}]"
    return [
        "'"
        + (prefix + sheet).replace("'", "''")
        + "'!"
        + f"{get_column_letter(c1)}{r1}:{get_column_letter(c2)}{r2}"
        for sheet, (c1, r1, c2, r2) in bounds.items()
    ]


def _solution_location(key: str) -> tuple[str, str] | None:
    """ "'[book.xlsx]SHEET 1'!B2" -> ("SHEET 1", "B2"), "...!B2:C3" -> ("SHEET 1", "B2:C3");
    other entries -> None."""
    if "!" not in key:
        return None
    sheet, cell = key.rsplit("!", 1)
    if not AREA.match(cell):
        return None
    sheet = sheet.strip("'").replace("''", "'")
    if sheet.startswith("[") and "]" in sheet:
        sheet = sheet.split("]", 1)[1]
    return sheet.upper(), cell.upper()


def _plain_value(value: Any) -> Any:
    """A Python value from the engine's result: first cell of a range, numpy scalars unwrapped."""
    if hasattr(value, "value"):
        value = value.value
    if hasattr(value, "shape") and getattr(value, "ndim", 0) > 0:
        value = value.flat[0] if value.size else None
    if type(value).__name__ == "XlError":
        return str(value)
    if type(value).__name__ == "Token":  # schedula's `empty`
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds() / 86400
    return str(value)
