"""Excel functions that the `formulas` engine lacks or gets wrong, written from Excel's documented
behaviour and registered into the engine by the checker's formula process (`register`).

New: AGGREGATE, SUBTOTAL, SEQUENCE. Replaced: INDEX (a row or column number of 0 means the whole
column or row; the engine took it for 1), ROWS and COLUMNS (they accept arrays, not only
references), VALUE (one text that is not a number turned the whole array into #VALUE!).

SUBTOTAL and AGGREGATE skip rows a filter hides, rows hidden by hand when asked to, and cells
that hold other subtotals; the engine hands functions values, not row formats or formulas, so the
checker passes those facts in (`WorkbookFacts`).
"""

from __future__ import annotations

import collections
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import schedula as sh
from formulas.functions import (
    COMPILING,
    Array,
    XlError,
    get_functions,
    wrap_func,
    wrap_impure_func,
    wrap_ufunc,
)
from formulas.functions.date import _text2datetime, xdate, xtime
from formulas.functions.look import xindex as _engine_index
from formulas.ranges import Ranges
from formulas.tokens.operand import Error

VALUE_ERROR = Error.errors["#VALUE!"]
DIV_ERROR = Error.errors["#DIV/0!"]
NUM_ERROR = Error.errors["#NUM!"]
REF_ERROR = Error.errors["#REF!"]
NA_ERROR = Error.errors["#N/A"]
CALC_ERROR = XlError("#CALC!")  # Excel's error for an empty array; the engine has none
_TIME_ONLY = re.compile(
    r"^\d{1,2}(:\d{1,2}(:\d{1,2}(\.\d*)?)?\s*([ap]m?)?|\s*[ap]m?)$", re.IGNORECASE
)


@dataclass
class WorkbookFacts:
    """What SUBTOTAL and AGGREGATE need beyond values; sheet titles upper-cased as the engine
    names them."""

    hidden_rows: dict[str, set[int]] = field(default_factory=dict)  # hidden by hand or filter
    filtered_rows: dict[str, set[int]] = field(default_factory=dict)  # hidden by a filter
    subtotal_cells: set[tuple[str, int, int]] = field(default_factory=set)  # (sheet, row, col)


_facts = WorkbookFacts()


def register(facts: WorkbookFacts | None = None) -> None:
    """Add the functions to the engine's registry (shared by every model in this process)."""
    global _facts
    _facts = facts or WorkbookFacts()
    registry = get_functions()
    for name, function in _FUNCTIONS.items():
        registry[name] = function
        registry["_XLFN." + name] = function


# --- values --------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))


def _is_error(value: Any) -> bool:
    return isinstance(value, XlError)


def _reference_cells(reference: Ranges) -> Iterable[tuple[str, int, int, Any]]:
    """(sheet, row, column, value) of every cell of a reference, area by area."""
    for area in reference.ranges:
        values = Ranges((area,), reference.values).value
        sheet = area.get("sheet", "").upper()
        first_row, first_col = int(area["r1"]), int(area["n1"])
        for (row, col), value in np.ndenumerate(values):
            yield sheet, first_row + row, first_col + col, value


def _plain(argument: Any) -> Any:
    """A reference's values, or the argument as it is."""
    return argument.value if isinstance(argument, Ranges) else argument


def _gather(
    argument: Any, *, skip_hidden: bool, skip_filtered: bool, skip_subtotals: bool
) -> list[Any]:
    """The values an aggregate sees in one argument: a reference's cells minus the rows it must
    skip and the cells holding other subtotals; an array's or a scalar's values as they are."""
    if isinstance(argument, Ranges):
        kept = []
        for sheet, row, col, value in _reference_cells(argument):
            if skip_subtotals and (sheet, row, col) in _facts.subtotal_cells:
                continue
            if skip_hidden and row in _facts.hidden_rows.get(sheet, ()):
                continue
            if skip_filtered and row in _facts.filtered_rows.get(sheet, ()):
                continue
            kept.append(value)
        return kept
    return list(np.ravel(np.asarray(argument, dtype=object)))


def _numbers(values: Iterable[Any]) -> list[float]:
    return [float(value) for value in values if _is_number(value)]


# --- the statistics behind SUBTOTAL and AGGREGATE -------------------------------------------------


def _average(numbers: list[float]) -> Any:
    return sum(numbers) / len(numbers) if numbers else DIV_ERROR


def _variance(numbers: list[float], sample: bool) -> Any:
    count = len(numbers)
    if count < (2 if sample else 1):
        return DIV_ERROR
    mean = sum(numbers) / count
    return sum((number - mean) ** 2 for number in numbers) / (count - 1 if sample else count)


def _deviation(numbers: list[float], sample: bool) -> Any:
    variance = _variance(numbers, sample)
    return variance if _is_error(variance) else math.sqrt(variance)


def _product(numbers: list[float]) -> float:
    return math.prod(numbers) if numbers else 0.0


def _median(numbers: list[float]) -> Any:
    if not numbers:
        return NUM_ERROR
    ordered, middle = sorted(numbers), len(numbers) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _mode(numbers: list[float]) -> Any:
    """The most frequent number; on a tie the one met first; #N/A when none repeats."""
    counts = Counter(numbers)
    best = max(counts.values(), default=0)
    if best < 2:
        return NA_ERROR
    return next(number for number in numbers if counts[number] == best)


def _kth(numbers: list[float], k: Any, largest: bool) -> Any:
    if not _is_number(k):
        return VALUE_ERROR
    k = math.ceil(float(k))  # LARGE/SMALL round k up
    if not 1 <= k <= len(numbers):
        return NUM_ERROR
    ordered = sorted(numbers, reverse=largest)
    return ordered[k - 1]


def _percentile(numbers: list[float], k: Any, exclusive: bool) -> Any:
    if not _is_number(k):
        return VALUE_ERROR
    k, count = float(k), len(numbers)
    if not numbers:
        return NUM_ERROR
    ordered = sorted(numbers)
    if exclusive:
        rank = k * (count + 1)  # 1-based
        if not 0 < k < 1 or rank < 1 or rank > count:
            return NUM_ERROR
        rank -= 1
    else:
        if not 0 <= k <= 1:
            return NUM_ERROR
        rank = k * (count - 1)
    low = math.floor(rank)
    if low + 1 >= count:
        return ordered[low]
    return ordered[low] + (rank - low) * (ordered[low + 1] - ordered[low])


def _quartile(numbers: list[float], quart: Any, exclusive: bool) -> Any:
    if not _is_number(quart):
        return VALUE_ERROR
    quart = math.trunc(float(quart))
    if not (1 <= quart <= 3 if exclusive else 0 <= quart <= 4):
        return NUM_ERROR
    return _percentile(numbers, quart / 4, exclusive)


# function_num -> what it computes from the numbers (COUNTA, 3, is handled apart: it counts values)
_SIMPLE: dict[int, Callable[[list[float]], Any]] = {
    1: _average,
    2: len,
    4: lambda numbers: max(numbers, default=0.0),
    5: lambda numbers: min(numbers, default=0.0),
    6: _product,
    7: lambda numbers: _deviation(numbers, sample=True),
    8: lambda numbers: _deviation(numbers, sample=False),
    9: lambda numbers: float(sum(numbers)),
    10: lambda numbers: _variance(numbers, sample=True),
    11: lambda numbers: _variance(numbers, sample=False),
    12: _median,
    13: _mode,
}
_WITH_K: dict[int, Callable[[list[float], Any], Any]] = {
    14: lambda numbers, k: _kth(numbers, k, largest=True),
    15: lambda numbers, k: _kth(numbers, k, largest=False),
    16: lambda numbers, k: _percentile(numbers, k, exclusive=False),
    17: lambda numbers, k: _quartile(numbers, k, exclusive=False),
    18: lambda numbers, k: _percentile(numbers, k, exclusive=True),
    19: lambda numbers, k: _quartile(numbers, k, exclusive=True),
}


def _summarise(function_num: int, values: list[Any]) -> Any:
    if function_num == 3:
        return len([value for value in values if value is not sh.EMPTY])
    return _SIMPLE[function_num](_numbers(values))


def _whole_number(value: Any) -> int | None:
    """A function_num or option given as a number (or a one-cell reference); None otherwise."""
    value = np.ravel(np.asarray(value, dtype=object))
    if value.size != 1 or not _is_number(value[0]):
        return None
    return math.trunc(float(value[0]))


def _first_error(values: Iterable[Any]) -> XlError | None:
    return next((value for value in values if _is_error(value)), None)


# --- SUBTOTAL, AGGREGATE, SEQUENCE -----------------------------------------------------------------


def xsubtotal(function_num: Any, *references: Any) -> Any:
    """SUBTOTAL(function_num, ref1, ...): 1-11 keep rows hidden by hand, 101-111 skip them; rows
    a filter hides and cells that hold subtotals are always skipped."""
    number = _whole_number(_plain(function_num))
    if number is None or not references:
        return VALUE_ERROR
    skip_hidden = number > 100
    number -= 100 if skip_hidden else 0
    if not 1 <= number <= 11:
        return VALUE_ERROR
    values = []
    for reference in references:
        if not isinstance(reference, Ranges):
            return VALUE_ERROR  # SUBTOTAL takes references only
        values.extend(
            _gather(reference, skip_hidden=skip_hidden, skip_filtered=True, skip_subtotals=True)
        )
    error = _first_error(values)
    return error if error is not None else _summarise(number, values)


# options 0-7: (skip hidden rows, skip error values, skip nested SUBTOTAL/AGGREGATE)
_AGGREGATE_OPTIONS = {
    0: (False, False, True),
    1: (True, False, True),
    2: (False, True, True),
    3: (True, True, True),
    4: (False, False, False),
    5: (True, False, False),
    6: (False, True, False),
    7: (True, True, False),
}


def xaggregate(function_num: Any, options: Any, *arguments: Any) -> Any:
    """AGGREGATE(function_num, options, ref1, ...) for 1-13, AGGREGATE(function_num, options,
    array, k) for 14-19; arrays (computed values) only in the second form."""
    number, option = _whole_number(_plain(function_num)), _whole_number(_plain(options))
    if number is None or option not in _AGGREGATE_OPTIONS or not arguments:
        return VALUE_ERROR
    skip_hidden, skip_errors, skip_subtotals = _AGGREGATE_OPTIONS[option]
    if number in _WITH_K:
        if len(arguments) != 2:
            return VALUE_ERROR
        data, k = arguments
        sources = [data]
    elif number in _SIMPLE or number == 3:
        if not all(isinstance(argument, Ranges) for argument in arguments):
            return VALUE_ERROR
        sources, k = list(arguments), None
    else:
        return VALUE_ERROR
    values = [
        value
        for source in sources
        for value in _gather(
            source, skip_hidden=skip_hidden, skip_filtered=False, skip_subtotals=skip_subtotals
        )
    ]
    if skip_errors:
        values = [value for value in values if not _is_error(value)]
    elif (error := _first_error(values)) is not None:
        return error
    if k is None:
        return _summarise(number, values)
    numbers = _numbers(values)
    k_values = np.asarray(_plain(k), dtype=object)
    if k_values.ndim == 0 or k_values.size == 1:
        k_value = k_values.ravel()[0]
        return k_value if _is_error(k_value) else _WITH_K[number](numbers, k_value)
    return np.vectorize(
        lambda one: one if _is_error(one) else _WITH_K[number](numbers, one), otypes=[object]
    )(k_values).view(Array)


def xsequence(rows: Any, columns: Any = 1, start: Any = 1, step: Any = 1) -> Any:
    """SEQUENCE(rows, [columns], [start], [step]): numbers row by row."""
    values = [
        np.ravel(np.asarray(value, dtype=object))[0] for value in (rows, columns, start, step)
    ]
    if error := _first_error(values):
        return error
    if not all(_is_number(value) for value in values):
        return VALUE_ERROR
    rows, columns = math.trunc(float(values[0])), math.trunc(float(values[1]))
    if rows < 0 or columns < 0:
        return VALUE_ERROR
    if rows == 0 or columns == 0:
        return CALC_ERROR
    first, increment = float(values[2]), float(values[3])
    grid = first + increment * np.arange(rows * columns, dtype=float).reshape(rows, columns)
    return grid.astype(object).view(Array)


# --- corrected engine functions ---------------------------------------------------------------------


def _whole_line(value: Any) -> int | XlError:
    """A row/column number for INDEX: an int, 0 for "all", or an error."""
    if value is sh.EMPTY:
        return 0
    if _is_error(value):
        return value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return VALUE_ERROR
    if isinstance(value, (bool, np.bool_)):
        value = int(value)
    if not _is_number(value):
        return VALUE_ERROR
    return math.trunc(float(value))


def xindex(array: Any, row_num: Any, col_num: Any = None, area_num: Any = 1) -> Any:
    """INDEX where a row_num or column_num of 0 (or left empty) returns the whole column or row,
    as Excel documents; everything else is the engine's own INDEX."""
    row_value = _plain(row_num)
    col_value = _plain(col_num) if col_num is not None else None
    scalars = all(np.size(value) == 1 for value in (row_value, col_value) if value is not None)
    is_reference = isinstance(array, Ranges)
    if not scalars or (is_reference and len(array.ranges) != 1) or area_num != 1:
        return _engine_index(array, row_num, col_num, area_num)
    values = array.value if is_reference else np.atleast_2d(np.asarray(array, dtype=object))
    height, width = values.shape
    row = _whole_line(np.ravel(np.asarray(row_value, dtype=object))[0])
    if col_value is None:
        if height == 1 and width > 1:  # one row: the only number given picks a column
            row, column = 1, row
        elif width == 1:
            column = 1
        else:
            column = 0  # a table with only row_num: the whole row
    else:
        column = _whole_line(np.ravel(np.asarray(col_value, dtype=object))[0])
    for line in (row, column):
        if _is_error(line):
            return line
    if row != 0 and column != 0:
        return _engine_index(array, row_num, col_num, area_num)
    if row < 0 or column < 0:
        return VALUE_ERROR
    if row > height or column > width:
        return REF_ERROR
    rows = slice(None) if row == 0 else slice(row - 1, row)
    columns = slice(None) if column == 0 else slice(column - 1, column)
    if not is_reference:
        return values[rows, columns].view(Array)
    area = array.ranges[0]
    first_row, first_col = int(area["r1"]), int(area["n1"])
    top, bottom = (first_row, first_row + height - 1) if row == 0 else (first_row + row - 1,) * 2
    left, right = (
        (first_col, first_col + width - 1) if column == 0 else (first_col + column - 1,) * 2
    )
    part = Ranges.format_range(
        ("name", "n1", "n2"), sheet_id=area["sheet_id"], r1=top, r2=bottom, n1=left, n2=right
    )
    return Ranges((part,), array.values)


def _dimension(axis: int) -> Callable[[Any], Any]:
    """ROWS (axis 0) or COLUMNS (axis 1) of a reference or of an array."""

    def count(reference: Any) -> Any:
        if isinstance(reference, Ranges):
            if len(reference.ranges) != 1:
                return REF_ERROR
            area = reference.ranges[0]
            return (
                int(area["r2"]) - int(area["r1"]) + 1 if axis == 0 else area["n2"] - area["n1"] + 1
            )
        if _is_error(reference):
            return reference
        return np.atleast_2d(np.asarray(reference, dtype=object)).shape[axis]

    return count


def _value(text: Any) -> Any:
    """VALUE of one item: numbers with thousands separators, a currency sign, a percent sign or
    accounting parentheses, then dates and times the way the engine reads them."""
    if _is_error(text):
        return text
    if text is sh.EMPTY:
        return 0.0
    if isinstance(text, (bool, np.bool_)):
        return VALUE_ERROR
    if _is_number(text):
        return float(text)
    cleaned = str(text).strip().replace(",", "")
    negative = cleaned.startswith("(") and cleaned.endswith(")")
    cleaned = cleaned.strip("()").strip() if negative else cleaned
    percent = cleaned.endswith("%")
    cleaned = cleaned.rstrip("%").strip()
    if cleaned.startswith(("$", "-$")):
        cleaned = cleaned.replace("$", "", 1)
    try:
        number = float(cleaned)
    except ValueError:
        if not cleaned or percent or negative:
            return VALUE_ERROR
        try:
            moment = _text2datetime(str(text))
            # A time alone is a fraction of a day; the engine would add January 1st of this year.
            day = 0 if _TIME_ONLY.match(cleaned) else xdate(*moment[:3])
            return day + xtime(*moment[3:])
        except Exception:  # noqa: BLE001 - the engine's date reader fails in many ways
            return VALUE_ERROR
    if not math.isfinite(number):
        return VALUE_ERROR
    number = number / 100 if percent else number
    return -number if negative else number


def _references_function(function: Callable[..., Any]) -> dict:
    """Registry entry for a function that needs references, not only their values."""
    return {
        "extra_inputs": collections.OrderedDict([(COMPILING, False)]),
        "function": wrap_impure_func(wrap_func(function, ranges=True)),
    }


_FUNCTIONS: dict[str, Any] = {
    "AGGREGATE": wrap_func(xaggregate, ranges=True),
    "SUBTOTAL": wrap_func(xsubtotal, ranges=True),
    "SEQUENCE": wrap_func(xsequence),
    "INDEX": _references_function(xindex),
    "ROWS": wrap_func(_dimension(0), ranges=True),
    "COLUMNS": wrap_func(_dimension(1), ranges=True),
    "VALUE": wrap_ufunc(_value, input_parser=lambda *values: values, check_error=lambda *_: None),
}
