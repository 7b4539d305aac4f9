"""Rewrite a workbook's formulas so the `formulas` engine evaluates them as Excel would.

The checker evaluates an agent's formulas with `formulas` when LibreOffice is not installed.
Before that, a copy of the workbook is rewritten: structured table references become ranges,
references to other workbooks read the values Excel cached for them, ROW/ROWS/COLUMN/COLUMNS
and CELL("row"/"col") of a reference become numbers (the engine would see a loop where Excel
sees none), `--x` keeps its meaning, and empty arguments get Excel's defaults. What the engine
cannot do at all (OFFSET, INDIRECT of computed text) is recorded per cell so the checker can
fail it with a reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openpyxl
from openpyxl.formula.tokenizer import Token, Tokenizer
from openpyxl.utils import column_index_from_string, get_column_letter
from openpyxl.utils.cell import coordinate_from_string, range_boundaries
from openpyxl.worksheet.formula import ArrayFormula

MAX_ROW, MAX_COL = 1_048_576, 16_384  # Excel's sheet size
NUMBER = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$")  # text that is a number


@dataclass
class PreparedWorkbook:
    facts: Any  # t2s.excel_functions.WorkbookFacts
    unsupported: dict[tuple[str, str], str]  # (SHEET, coordinate) -> what the engine cannot do
    calls: dict[tuple[str, str], frozenset[str]]  # (SHEET, coordinate) -> functions it calls


def prepare_workbook(source: Path, target: Path) -> PreparedWorkbook:
    """Copy `source` to `target` with every formula rewritten by `FormulaRewriter`, and gather
    the facts SUBTOTAL and AGGREGATE need (hidden rows, cells that hold subtotals)."""
    from t2s.excel_functions import WorkbookFacts

    book = openpyxl.load_workbook(source)
    rewriter = FormulaRewriter(book)
    for sheet in book.worksheets:
        for row in sheet.iter_rows():
            for cell in row:
                value = cell.value
                if isinstance(value, str) and value.startswith("=") and len(value) > 1:
                    cell.value = rewriter.rewrite(value, sheet.title, cell.row, cell.column)
                elif isinstance(value, ArrayFormula) and value.text:
                    value.text = rewriter.rewrite(value.text, sheet.title, cell.row, cell.column)
    for name, defined in list(book.defined_names.items()):
        text = rewriter.rewrite_name(defined.attr_text or "")
        if text is None:
            del book.defined_names[name]  # it would stop the engine from loading the book
        else:
            defined.attr_text = text
    book.save(target)

    facts = WorkbookFacts()
    for sheet in book.worksheets:
        title = sheet.title.upper()
        hidden = {index for index, line in sheet.row_dimensions.items() if line.hidden}
        facts.hidden_rows[title] = hidden
        if sheet.auto_filter.ref and sheet.auto_filter.filterColumn:
            _, first, _, last = range_boundaries(sheet.auto_filter.ref)
            facts.filtered_rows[title] = {row for row in hidden if first < row <= last}
    for (title, coordinate), names in rewriter.calls.items():
        if names & _SUBTOTAL_CALLS:
            col, row = coordinate_from_string(coordinate)
            facts.subtotal_cells.add((title, row, column_index_from_string(col)))
    return PreparedWorkbook(facts, rewriter.unsupported, rewriter.calls)


_WHOLE_COLUMNS = re.compile(r"^(\$?[A-Za-z]{1,3}):(\$?[A-Za-z]{1,3})$")
_WHOLE_ROWS = re.compile(r"^(\$?\d+):(\$?\d+)$")
AREA = re.compile(r"^\$?([A-Za-z]{1,3})\$?(\d+)(?::\$?([A-Za-z]{1,3})\$?(\d+))?$")
_EXTERNAL = re.compile(r"^'?\[(\d+)\](.*?)'?!(.+)$")
_STRUCTURED = re.compile(r"^((?:[^\W\d]|\\)[\w.\\]*)?\[(.*)\]$", re.DOTALL)
_TABLE_ITEM = re.compile(r"\[((?:'.|[^\]'])*)\]|[,:\s]+", re.DOTALL)  # [item] or separators
_TABLE_PARTS = {"#ALL", "#DATA", "#HEADERS", "#TOTALS", "#THIS ROW"}
_SUBTOTAL_CALLS = frozenset({"SUBTOTAL", "AGGREGATE", "_XLFN.AGGREGATE"})
_SHAPE_CALLS = {"ROW", "ROWS", "COLUMN", "COLUMNS"}
_CELL_POSITIONS = {"row": "FIRST ROW", "col": "FIRST COLUMN"}  # CELL reads the first cell only
# Arguments left empty (`SORT(A1:A9,,-1)`) reach the engine's functions as 0, not as "omitted";
# where Excel's default is something else, spell the default out. (function: {index: default})
_EMPTY_ARGUMENT_DEFAULTS = {
    "SORT": {1: "1", 2: "1"},
    "_XLFN._XLWS.SORT": {1: "1", 2: "1"},
    "SEQUENCE": {1: "1", 2: "1", 3: "1"},
    "_XLFN.SEQUENCE": {1: "1", 2: "1", 3: "1"},
    "XLOOKUP": {3: "NA()"},
    "_XLFN.XLOOKUP": {3: "NA()"},
}
_NUMBERS_CAP = 100_000  # ROW(A1:A100000) becomes numbers; bigger ones stay references


class FormulaRewriter:
    """Rewrites formulas so that the engine computes what Excel does:

    - structured references (`Table1[Amount]`, `Table1[[#This Row],[Qty]]`) become A1 ranges;
    - references into other workbooks (`[1]Rates!B2`) read a sheet added with the values Excel
      cached for them;
    - ROW, COLUMN, ROWS, COLUMNS (and CELL("row"/"col")) of a reference become numbers: they
      need only its position, but the engine reads its cells, and `ROWS($A$2:A2)` in A2 would
      make a cycle;
    - `--x` becomes `-(-(x))`: the engine folds the two signs into a `+` that does not turn
      TRUE into 1;
    - whole columns and rows (`C:C`, `2:2`) are cut to the used range: the engine expands them
      to a million cells;
    - empty arguments get Excel's default where it is not 0 (`SORT(A1:A9,,-1)`).

    What cannot be rewritten becomes #REF! in the formula and a reason in `unsupported`.
    """

    def __init__(self, book):
        self.max_row = max((sheet.max_row for sheet in book.worksheets), default=1)
        self.max_col = max((sheet.max_column for sheet in book.worksheets), default=1)
        self.tables = {
            (table.displayName or table.name).casefold(): (sheet.title, table)
            for sheet in book.worksheets
            for table in sheet.tables.values()
        }
        self.book = book
        self.external_sheets: dict[tuple[int, str], str | None] = {}  # (link, SHEET) -> copy
        self.unsupported: dict[tuple[str, str], str] = {}
        self.calls: dict[tuple[str, str], frozenset[str]] = {}

    def rewrite(self, formula: str, sheet: str, row: int, col: int) -> str:
        """A cell's formula; what cannot be rewritten is kept in `unsupported`."""
        key = (sheet.upper(), f"{get_column_letter(col)}{row}")
        text, tokens, problems = self._rewrite(formula, sheet, row, col)
        calls = frozenset(
            token.value[:-1].upper()
            for token in tokens
            if token.type == Token.FUNC and token.subtype == Token.OPEN
        )
        if calls:
            self.calls[key] = calls
        if problems:
            self.unsupported[key] = problems[0]
        return text

    def rewrite_name(self, text: str) -> str | None:
        """A defined name's formula, or None when the engine could not read it (a reference
        into another workbook, an unknown table)."""
        rewritten, tokens, problems = self._rewrite("=" + text, None, None, None)
        return None if problems or not tokens else rewritten[1:]

    def _rewrite(self, formula: str, sheet, row, col) -> tuple[str, list, list[str]]:
        try:
            tokens = Tokenizer(formula).items
        except Exception:  # noqa: BLE001 - leave what the tokenizer cannot read to the engine
            return formula, [], []
        problems: list[str] = []
        texts = [token.value for token in tokens]
        for index, token in enumerate(tokens):
            if token.type == Token.OPERAND and token.subtype == Token.RANGE:
                texts[index] = self._reference(token.value, sheet, row, col, problems)
        self._shapes(tokens, texts)
        for index, token in enumerate(tokens):
            if token.type == Token.OPERAND and token.subtype == Token.RANGE:
                texts[index] = self._bounded(texts[index])
        self._empty_arguments(tokens, texts)
        self._coercions(tokens, texts)
        return "=" + "".join(texts), tokens, problems

    # -- references

    def _reference(self, text: str, sheet, row, col, problems: list[str]) -> str:
        if _EXTERNAL.match(text):
            return self._external(text, problems)
        if "[" in text and (match := _STRUCTURED.match(text)):
            try:
                return self._structured(match[1], match[2], sheet, row, col)
            except _Unresolved as failure:
                problems.append(f"structured reference {text} cannot be resolved: {failure}")
                return "#REF!"
        if "[" in text:
            problems.append(f"reference {text} is not supported by the formulas engine")
            return "#REF!"
        return text

    def _external(self, text: str, problems: list[str]) -> str:
        """`[1]Rates!B2:C9` -> the same cells of a sheet holding the values Excel cached for
        that workbook: Excel shows them while the other file is out of reach."""
        index, sheet, area = _EXTERNAL.match(text).groups()
        key = (int(index), sheet.replace("''", "'").upper())
        if key not in self.external_sheets:
            self.external_sheets[key] = self._copy_of_cache(*key)
        title = self.external_sheets[key]
        if title is None:
            problems.append(
                f"external workbook reference {text} has no cached values "
                "(the other workbook is not available)"
            )
            return "#REF!"
        return "'" + title.replace("'", "''") + "'!" + area

    def _copy_of_cache(self, index: int, sheet: str) -> str | None:
        cached = _cached_external_sheet(self.book, index, sheet)
        if cached is None:
            return None
        copy = self.book.create_sheet(f"t2s external {len(self.external_sheets) + 1}")
        for coordinate, value in cached.items():
            copy[coordinate] = value
        return copy.title

    def _structured(self, name: str | None, spec: str, sheet, row, col) -> str:
        """`Table1[...]` -> `'Sheet'!$B$2:$B$9`, after Excel's structured reference rules."""
        if name:
            found = self.tables.get(name.casefold())
            if found is None:
                raise _Unresolved(f"no table named {name}")
        else:
            found = next(
                (
                    (title, table)
                    for title, table in self.tables.values()
                    if title == sheet and row is not None and _inside(table.ref, row, col)
                ),
                None,
            )
            if found is None:
                raise _Unresolved("the formula is not inside a table")
        title, table = found
        parts, columns = _table_spec(spec)
        min_col, min_row, max_col, max_row = range_boundaries(table.ref)
        headers = 1 if table.headerRowCount is None else table.headerRowCount
        totals = table.totalsRowCount or 0
        data_first, data_last = min_row + headers, max_row - totals
        names = [column.name.casefold() for column in table.tableColumns]
        spans = []
        for part in parts or {"#DATA"}:
            if part == "#ALL":
                spans.append((min_row, max_row))
            elif part == "#DATA":
                spans.append((data_first, data_last))
            elif part == "#HEADERS":
                if not headers:
                    raise _Unresolved(f"table {table.displayName} has no header row")
                spans.append((min_row, min_row))
            elif part == "#TOTALS":
                if not totals:
                    raise _Unresolved(f"table {table.displayName} has no totals row")
                spans.append((max_row, max_row))
            else:  # #THIS ROW
                if row is None or not data_first <= row <= data_last:
                    return "#VALUE!"  # Excel's answer outside the table's data rows
                spans.append((row, row))
        top, bottom = min(span[0] for span in spans), max(span[1] for span in spans)
        if columns:
            try:
                first, last = (names.index(column.casefold()) for column in columns)
            except ValueError:
                raise _Unresolved(f"table {table.displayName} has no column {columns}") from None
            left, right = min_col + min(first, last), min_col + max(first, last)
        else:
            left, right = min_col, max_col
        start = f"${get_column_letter(left)}${top}"
        end = f"${get_column_letter(right)}${bottom}"
        quoted = "'" + title.replace("'", "''") + "'!"
        return quoted + (start if start == end else f"{start}:{end}")

    def _bounded(self, text: str) -> str:
        prefix, _, reference = text.rpartition("!")
        if match := _WHOLE_COLUMNS.match(reference):
            reference = f"{match[1]}1:{match[2]}{self.max_row}"
        elif match := _WHOLE_ROWS.match(reference):
            reference = f"A{match[1]}:{get_column_letter(self.max_col)}{match[2]}"
        else:
            return text
        return f"{prefix}!{reference}" if prefix else reference

    # -- calls

    def _shapes(self, tokens, texts) -> None:
        """ROW/COLUMN/ROWS/COLUMNS(reference) and CELL("row"/"col", reference) -> numbers."""
        for index, token in enumerate(tokens):
            if token.type != Token.FUNC or token.subtype != Token.OPEN:
                continue
            name = token.value[:-1].upper()
            arguments = _plain_arguments(tokens, index)
            if arguments is None:
                continue
            if name in _SHAPE_CALLS and len(arguments) == 1:
                info, position = name, arguments[0]
            elif name == "CELL" and len(arguments) == 2:
                kind = tokens[arguments[0]].value.strip('"').lower()
                if tokens[arguments[0]].subtype != Token.TEXT or kind not in _CELL_POSITIONS:
                    continue
                info, position = _CELL_POSITIONS[kind], arguments[1]
            else:
                continue
            if tokens[position].subtype != Token.RANGE:
                continue
            bounds = _area_bounds(texts[position].rpartition("!")[2])
            if bounds is None:
                continue
            constant = _shape_constant(info, *bounds)
            if constant is None:
                continue
            close = _closing(tokens, index)
            texts[index] = constant
            for inside in range(index + 1, close + 1):
                texts[inside] = ""

    def _empty_arguments(self, tokens, texts) -> None:
        for index, token in enumerate(tokens):
            if token.type != Token.FUNC or token.subtype != Token.OPEN:
                continue
            defaults = _EMPTY_ARGUMENT_DEFAULTS.get(token.value[:-1].upper())
            if not defaults:
                continue
            argument, depth, filled = 0, 0, False
            for position in range(index + 1, len(tokens)):
                current = tokens[position]
                if current.subtype == Token.OPEN:
                    depth += 1
                elif current.subtype == Token.CLOSE:
                    if depth == 0:
                        if not filled and argument in defaults:
                            texts[position] = defaults[argument] + texts[position]
                        break
                    depth -= 1
                elif depth == 0 and current.type == Token.SEP and current.subtype == Token.ARG:
                    if not filled and argument in defaults:
                        texts[position] = defaults[argument] + texts[position]
                    argument, filled = argument + 1, False
                    continue
                if current.type != Token.WSPACE:
                    filled = True

    def _coercions(self, tokens, texts) -> None:
        index = 0
        while index < len(tokens):
            if tokens[index].type != Token.OP_PRE:
                index += 1
                continue
            end = index
            while end < len(tokens) and tokens[end].type in (Token.OP_PRE, Token.WSPACE):
                end += 1
            signs = [at for at in range(index, end) if tokens[at].type == Token.OP_PRE]
            minus = sum(tokens[position].value == "-" for position in signs)
            last = _primary_end(tokens, end)
            if minus and minus % 2 == 0 and last is not None:
                for position in signs:
                    texts[position] += "("
                texts[last] += ")" * len(signs)
            index = end


class _Unresolved(Exception):
    pass


def _cached_external_sheet(book, index: int, sheet: str) -> dict[str, Any] | None:
    """Coordinate -> value Excel cached for a sheet of the workbook behind `[index]` (a cell
    it did not cache was empty), or None when it cached nothing for that sheet."""
    links = book._external_links
    if not 0 < index <= len(links) or links[index - 1].externalBook is None:
        return None
    external = links[index - 1].externalBook
    names = [name.upper() for name in external.sheetNames.sheetName] if external.sheetNames else []
    if sheet not in names or external.sheetDataSet is None:
        return None
    values = {}
    for data in external.sheetDataSet.sheetData:
        if data.sheetId != names.index(sheet):
            continue
        for line in data.row or ():
            for cell in line.cell or ():
                if cell.v is None:
                    continue
                if cell.t in ("s", "str", "e"):  # openpyxl writes "#N/A" and the like as errors
                    values[cell.r] = str(cell.v)
                elif cell.t == "b":
                    values[cell.r] = str(cell.v).lower() in ("1", "true")
                else:
                    values[cell.r] = float(cell.v) if NUMBER.match(str(cell.v)) else str(cell.v)
    return values or None


def _table_spec(spec: str) -> tuple[set[str], list[str]]:
    """The row parts (`#Data`, `#This Row`, ...) and the first and last column a structured
    reference's brackets name; no columns means all of them."""
    spec = spec.strip()
    if spec.startswith("@"):
        column = spec[1:].strip()
        column = column[1:-1] if column.startswith("[") and column.endswith("]") else column
        return {"#THIS ROW"}, [_unescape(column)] * 2 if column else []
    if not spec.startswith("["):
        if spec.upper() in _TABLE_PARTS:
            return {spec.upper()}, []
        return set(), [_unescape(spec)] * 2 if spec else []
    parts, columns, position = set(), [], 0
    while position < len(spec):
        match = _TABLE_ITEM.match(spec, position)
        if match is None:
            raise _Unresolved(f"cannot read [{spec}]")
        position = match.end()
        item = match[1]
        if item is None:
            continue
        if item.upper() in _TABLE_PARTS:
            parts.add(item.upper())
        else:
            columns.append(_unescape(item))
    if len(columns) > 2:
        raise _Unresolved(f"cannot read [{spec}]")
    return parts, (columns * 2)[:2] if columns else []


def _unescape(name: str) -> str:
    return re.sub(r"'(.)", r"\1", name)


def _inside(reference: str, row: int, col: int) -> bool:
    min_col, min_row, max_col, max_row = range_boundaries(reference)
    return min_row <= row <= max_row and min_col <= col <= max_col


def _plain_arguments(tokens, open_index: int) -> list[int] | None:
    """Indices of a call's arguments when each is a single operand token; None otherwise."""
    arguments, expecting = [], True
    for position in range(open_index + 1, len(tokens)):
        token = tokens[position]
        if token.type == Token.WSPACE:
            continue
        if token.type == Token.FUNC and token.subtype == Token.CLOSE:
            return arguments if not expecting or not arguments else None
        if token.type == Token.SEP and token.subtype == Token.ARG and not expecting:
            expecting = True
        elif token.type == Token.OPERAND and expecting:
            arguments.append(position)
            expecting = False
        else:
            return None
    return None


def _closing(tokens, open_index: int) -> int:
    depth = 0
    for position in range(open_index, len(tokens)):
        subtype = tokens[position].subtype
        if subtype == Token.OPEN:
            depth += 1
        elif subtype == Token.CLOSE:
            depth -= 1
            if depth == 0:
                return position
    return len(tokens) - 1


def _primary_end(tokens, start: int) -> int | None:
    """The last token of the operand, call, bracketed or array expression starting at `start`,
    with any `:` range operators that follow it (they bind tighter than a sign)."""
    while start < len(tokens) and tokens[start].type == Token.WSPACE:
        start += 1
    if start >= len(tokens):
        return None
    token = tokens[start]
    if token.type == Token.OPERAND:
        last = start
    elif token.subtype == Token.OPEN:
        last = _closing(tokens, start)
    else:
        return None
    after = tokens[last + 1] if last + 1 < len(tokens) else None
    if after is not None and after.type == Token.OP_IN and after.value == ":":
        return _primary_end(tokens, last + 2)
    return last


def _area_bounds(reference: str) -> tuple[int, int, int, int] | None:
    """(first row, first column, last row, last column) of an A1 reference, whole lines too."""
    if match := AREA.match(reference):
        first_col, first_row = column_index_from_string(match[1].upper()), int(match[2])
        last_col = column_index_from_string(match[3].upper()) if match[3] else first_col
        last_row = int(match[4]) if match[4] else first_row
    elif match := _WHOLE_COLUMNS.match(reference):
        first_row, last_row = 1, MAX_ROW
        first_col = column_index_from_string(match[1].strip("$").upper())
        last_col = column_index_from_string(match[2].strip("$").upper())
    elif match := _WHOLE_ROWS.match(reference):
        first_col, last_col = 1, MAX_COL
        first_row, last_row = int(match[1].strip("$")), int(match[2].strip("$"))
    else:
        return None
    return (
        min(first_row, last_row),
        min(first_col, last_col),
        max(first_row, last_row),
        max(first_col, last_col),
    )


def _shape_constant(info: str, top: int, left: int, bottom: int, right: int) -> str | None:
    if info == "ROWS":
        return str(bottom - top + 1)
    if info == "COLUMNS":
        return str(right - left + 1)
    if info == "FIRST ROW" or (info == "ROW" and top == bottom):
        return str(top)
    if info == "FIRST COLUMN" or (info == "COLUMN" and left == right):
        return str(left)
    # The numbers of several rows or columns: SEQUENCE, as the engine parses a long array
    # constant slowly.
    if info == "ROW" and bottom - top < _NUMBERS_CAP:
        return f"SEQUENCE({bottom - top + 1},1,{top})"
    if info == "COLUMN" and right - left < _NUMBERS_CAP:
        return f"SEQUENCE(1,{right - left + 1},{left})"
    return None
