"""Catch lessons that quote a task's answer: a skill must teach behaviour, not memorise gold.

The rule: a *gold marker* is a value found in the answer cells of any of the task's gold
workbooks (its `answer_position`) that the agent could not have known without the answer, i.e.
it appears neither anywhere in that case's input workbook, nor in the instruction, nor in the
skill the patch is written against. Of those, strings count when they are at least 3
characters long after normalisation (case-folded, whitespace collapsed), numbers when they are
not small whole numbers (|x| < 10: counts, row offsets and list positions are not answers in
any useful sense). Dates are matched as ISO text (2024-03-05) and times as HH:MM.

A text quotes gold when it contains a string marker as a whole word (or run of words), or a
number that equals a numeric marker once both are rounded to 2 decimals, as the checker does.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openpyxl
from openpyxl.utils import get_column_letter

from t2s.checker import parse_answer_position
from t2s.errors import TaskError
from t2s.tasks import Task

MIN_STRING_CHARS = 3
TRIVIAL_NUMBER = 10  # whole numbers with |x| below this are never markers
MAX_CELLS = 20_000  # of one answer area; a whole-column answer on a huge sheet stops here

_NUMBER_IN_TEXT = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])")


@dataclass
class GoldMarkers:
    strings: set[str] = field(default_factory=set)
    numbers: set[float] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.strings or self.numbers)

    def leaks(self, text: str) -> list[str]:
        """The markers `text` quotes, as they appear in the markers (sorted, distinct)."""
        found: set[str] = set()
        folded = normalize_text(text)
        found.update(marker for marker in self.strings if _says(folded, marker))
        for token in _NUMBER_IN_TEXT.findall(folded):
            number = _round(token)
            if number in self.numbers:
                found.add(_show_number(number))
        return sorted(found)


def normalize_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).replace("\xa0", " ")
    return " ".join(text.split()).casefold()


def gold_markers(task: Task, known_texts: Iterable[str] = ()) -> GoldMarkers:
    """The task's gold markers; values that `known_texts` (e.g. the skill's files) say are not."""
    known_text = "\n".join(normalize_text(text) for text in [task.instruction, *known_texts])
    known_numbers = {_round(token) for token in _NUMBER_IN_TEXT.findall(known_text)}
    markers = GoldMarkers()
    for case in task.cases:
        seen = _markers_of_values(_workbook_values(case.input_path))
        found = _markers_of_values(_answer_values(task, case.answer_path))
        markers.strings |= {
            value for value in found.strings - seen.strings if not _says(known_text, value)
        }
        markers.numbers |= found.numbers - seen.numbers - known_numbers
    return markers


def _answer_values(task: Task, gold_path: Path) -> list[Any]:
    try:
        gold = openpyxl.load_workbook(gold_path, data_only=True, read_only=False)
    except Exception as error:  # noqa: BLE001 - an unreadable gold file is the task's problem
        raise TaskError(f"gold workbook {gold_path} cannot be read: {error}") from None
    default = task.answer_sheet if task.answer_sheet in gold.sheetnames else gold.sheetnames[0]
    values = []
    for area in parse_answer_position(task.answer_position, default):
        sheet = _sheet(gold, area.sheet)
        if sheet is None:
            continue
        max_col = area.max_col or sheet.max_column
        max_row = area.max_row or sheet.max_row
        cells = 0
        for row in range(area.min_row, max_row + 1):
            for col in range(area.min_col, max_col + 1):
                values.append(sheet[f"{get_column_letter(col)}{row}"].value)
                cells += 1
                if cells >= MAX_CELLS:
                    break
            if cells >= MAX_CELLS:
                break
    return values


def _sheet(workbook, name: str | None):
    if name is None:
        return workbook.worksheets[0]
    for title in workbook.sheetnames:
        if title.casefold() == name.casefold():
            return workbook[title]
    return None


def _workbook_values(path: Path) -> list[Any]:
    """Every value of a workbook, both formulas and their cached results."""
    values: list[Any] = []
    for data_only in (False, True):
        try:
            workbook = openpyxl.load_workbook(path, data_only=data_only, read_only=True)
        except Exception as error:  # noqa: BLE001
            raise TaskError(f"input workbook {path} cannot be read: {error}") from None
        try:
            for sheet in workbook.worksheets:
                values.append(sheet.title)
                for row in sheet.iter_rows(values_only=True):
                    values.extend(value for value in row if value is not None)
        finally:
            workbook.close()
    return values


def _markers_of_values(values: Iterable[Any]) -> GoldMarkers:
    markers = GoldMarkers()
    for value in values:
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, dt.datetime):
            markers.strings.add(value.date().isoformat())
            if value.time() != dt.time(0, 0):
                markers.strings.add(value.strftime("%H:%M"))
        elif isinstance(value, dt.date):
            markers.strings.add(value.isoformat())
        elif isinstance(value, dt.time):
            markers.strings.add(value.strftime("%H:%M"))
        elif isinstance(value, (int, float)):
            _add_number(markers, float(value))
        else:
            text = normalize_text(str(value))
            if re.fullmatch(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)", text):
                _add_number(markers, float(text))
            elif len(text) >= MIN_STRING_CHARS:
                markers.strings.add(text)
    return markers


def _says(text: str, value: str) -> bool:
    """Whether normalised `text` holds `value` as a whole word or run of words."""
    return re.search(rf"(?<!\w){re.escape(value)}(?!\w)", text) is not None


def _round(token: str) -> float:
    return round(float(token.replace(",", "")), 2)


def _add_number(markers: GoldMarkers, number: float) -> None:
    if not math.isfinite(number):
        return
    if number == int(number) and abs(number) < TRIVIAL_NUMBER:
        return
    markers.numbers.add(round(number, 2))


def _show_number(number: float) -> str:
    return str(int(number)) if number == int(number) else f"{number:g}"
