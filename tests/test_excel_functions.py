"""Formulas the `formulas` engine could not evaluate as Excel does, judged through the checker.

Expected values are the ones Excel's documentation gives (AGGREGATE, SUBTOTAL, SEQUENCE, INDEX,
VALUE, ROWS/COLUMNS examples) or follow from its documented rules. Each test writes one output
workbook holding several formulas and judges it once: every judgement starts an engine process.
"""

import openpyxl
import pytest
from openpyxl.worksheet.formula import ArrayFormula
from openpyxl.worksheet.table import Table

from t2s import checker
from t2s.checker import check_case
from t2s.tasks import CELL_LEVEL, Task, TestCase


@pytest.fixture(autouse=True)
def no_libreoffice(monkeypatch):
    monkeypatch.setattr(checker, "libreoffice_binary", lambda: None)


def _judge(tmp_path, data, answers, prepare=None):
    """Judge an output holding `data` plus the formulas of `answers` ({cell: (formula, value
    Excel shows)}) against a gold workbook holding `data` plus those values."""
    gold, output = openpyxl.Workbook(), openpyxl.Workbook()
    for book in (gold, output):
        for coordinate, value in data.items():
            book.active[coordinate] = value
        if prepare is not None:
            prepare(book.active)
    for coordinate, (formula, value) in answers.items():
        gold.active[coordinate] = value
        output.active[coordinate] = formula
    gold.save(tmp_path / "gold.xlsx")
    output.save(tmp_path / "output.xlsx")
    cells = ",".join(answers)
    case = TestCase("1", tmp_path / "input.xlsx", tmp_path / "gold.xlsx")
    task = Task("t", "do it", CELL_LEVEL, cells, None, None, "test", (case,))
    return check_case(task, case, tmp_path / "output.xlsx", engine="formulas")


def _assert_passes(result):
    assert result.judge == "formulas"
    assert result.passed, "\n".join(mismatch.describe() for mismatch in result.mismatches)


# The example table of Excel's AGGREGATE page: errors among the numbers of column A.
AGGREGATE_DATA = {
    **{f"A{row}": value for row, value in enumerate(
        ["#DIV/0!", 72, 30, "#NUM!", 31, 96, 32, 81, 33, 53, 34], start=1)},
    **{f"B{row}": value for row, value in enumerate(
        [82, 65, 95, 63, 53, 71, 55, 83, 100, 91, 89], start=1)},
}  # fmt: skip


def test_aggregate_follows_excels_examples(tmp_path):
    answers = {
        "D1": ("=_xlfn.AGGREGATE(4,6,A1:A11)", 96),  # MAX ignoring errors
        "D2": ("=_xlfn.AGGREGATE(14,6,A1:A11,3)", 72),  # third largest
        "D3": ("=_xlfn.AGGREGATE(15,6,A1:A11)", "#VALUE!"),  # SMALL needs its k
        "D4": ("=_xlfn.AGGREGATE(12,6,A1:A11,B1:B11)", 68),  # MEDIAN of both columns
        "D5": ("=_xlfn.AGGREGATE(9,0,A1:A11)", "#DIV/0!"),  # errors propagate unless ignored
        "D6": ("=_xlfn.AGGREGATE(9,4,B1:B3)", 242),
        "D7": ("=_xlfn.AGGREGATE(2,6,A1:A11)", 9),  # COUNT
        "D8": ("=_xlfn.AGGREGATE(17,6,B1:B11,1)", 64),  # QUARTILE.INC
        "D9": ("=_xlfn.AGGREGATE(19,6,B1:B11,1)", 63),  # QUARTILE.EXC
        "D10": ("=_xlfn.AGGREGATE(13,6,B1:B11)", "#N/A"),  # MODE: no value repeats
        "D11": ("=_xlfn.AGGREGATE(9,6,B1:B3*2)", "#VALUE!"),  # 1-13 take references only
        "D12": ("=_xlfn.AGGREGATE(1,6,C1:C3)", "#DIV/0!"),  # AVERAGE of nothing
    }
    _assert_passes(_judge(tmp_path, AGGREGATE_DATA, answers))


def test_aggregate_array_form_finds_the_kth_match(tmp_path):
    # The common lookup of the n-th matching row: errors from dividing by FALSE are skipped.
    data = {"A1": "x", "A2": "y", "A3": "x", "A4": "x", "B1": 10, "B2": 20, "B3": 30, "B4": 40}
    answers = {
        "D1": ('=INDEX(B1:B4,_xlfn.AGGREGATE(15,6,ROW(A1:A4)/(A1:A4="x"),2))', 30),
        "D2": ('=IFERROR(INDEX(B1:B4,_xlfn.AGGREGATE(15,6,ROW(A1:A4)/(A1:A4="x"),4)),"")', ""),
        "D3": ('=_xlfn.AGGREGATE(14,6,B1:B4/(A1:A4="x"),1)', 40),
        "D4": ("=_xlfn.AGGREGATE(16,6,B1:B4,0.25)", 17.5),  # PERCENTILE.INC
    }
    _assert_passes(_judge(tmp_path, data, answers))


def test_subtotal_skips_nested_subtotals_and_hidden_rows(tmp_path):
    # Excel's SUBTOTAL page: 120, 10, 150, 23 sum to 303 and average 75.75.
    data = {"A2": 120, "A3": 10, "A4": 150, "A5": 23, "A6": "=SUBTOTAL(9,A2:A5)", "A7": "text"}

    def hide_row_3(sheet):
        sheet.row_dimensions[3].hidden = True

    answers = {
        "C1": ("=SUBTOTAL(9,A2:A5)", 303),
        "C2": ("=SUBTOTAL(1,A2:A5)", 75.75),
        "C3": ("=SUBTOTAL(9,A2:A7)", 303),  # the subtotal in A6 is not counted twice
        "C4": ("=SUBTOTAL(109,A2:A5)", 293),  # 101-111 skip the hidden row
        "C5": ("=SUBTOTAL(3,A2:A8)", 5),  # COUNTA: numbers and text, not empty cells or A6
        "C6": ("=SUBTOTAL(2,A2:A8)", 4),  # COUNT: numbers only
        "C7": ("=SUBTOTAL(4,A2:A5)", 150),
        "C8": ("=SUBTOTAL(12,A2:A5)", "#VALUE!"),
        "C9": ("=_xlfn.AGGREGATE(9,4,A2:A7)", 606),  # option 4 counts the nested subtotal
    }
    _assert_passes(_judge(tmp_path, data, answers, prepare=hide_row_3))


def test_subtotal_propagates_an_error_in_its_range(tmp_path):
    answers = {"C1": ("=SUBTOTAL(9,A1:A3)", "#N/A")}
    _assert_passes(_judge(tmp_path, {"A1": 1, "A2": "#N/A", "A3": 3}, answers))


def test_sequence_index_rows_and_columns(tmp_path):
    data = {
        **{f"A{row}": row for row in range(1, 5)},
        **{f"B{row}": 10 * row for row in range(1, 5)},
        **{f"C{row}": chr(96 + row) for row in range(1, 5)},
    }
    answers = {
        "E1": ("=SUM(_xlfn.SEQUENCE(4,5))", 210),  # 1..20
        "E2": ("=INDEX(_xlfn.SEQUENCE(4,5),3,2)", 12),
        "E3": ("=SUM(_xlfn.SEQUENCE(3,,10,-1))", 27),  # 10, 9, 8: empty columns means 1
        "E4": ("=SUM(INDEX(A1:B4,0,2))", 100),  # column 0 ... row 0 is the whole column
        "E5": ("=SUM(INDEX(A1:B4,2,0))", 22),  # and column 0 the whole row
        "E6": ("=MATCH(30,INDEX(A1:B4,0,2),0)", 3),
        "E7": ("=SUM(INDEX(A1:A4*2,0))", 20),  # on an array too
        "E8": ("=INDEX(A1:B4,3,2)", 30),  # the engine's own INDEX otherwise
        "E9": ("=INDEX(A1:B4,5,0)", "#REF!"),
        "E10": ("=ROWS({1,2,3;4,5,6})", 2),  # ROWS/COLUMNS take arrays
        "E11": ("=COLUMNS({1,2,3;4,5,6})", 3),
        "E12": ('=ROWS(_xlfn.UNIQUE(C1:C4&""))', 4),
        "E13": ("=INDEX(_xlfn._xlws.SORT(A1:A4,,-1),1)", 4),  # empty sort_index means 1
    }
    _assert_passes(_judge(tmp_path, data, answers))


def test_value_reads_numbers_times_and_text_element_by_element(tmp_path):
    data = {"A1": "x5", "A2": "y3", "A4": "x2", "B1": "12"}
    answers = {
        "D1": ('=VALUE("$1,000")', 1000),  # Excel's VALUE page
        "D2": ('=VALUE("16:48:00")-VALUE("12:00:00")', 0.2),  # ... 4:48 PM minus noon
        "D3": ('=VALUE("50%")+VALUE("(5)")', -4.5),
        "D4": ('=VALUE("abc")', "#VALUE!"),
        "D5": ("=VALUE(B1)+1", 13),  # text holding a number
        # The empty A3 gives VALUE("") = #VALUE!, where IF does not pick it.
        "D6": (ArrayFormula("D6", '=SUM(IF(LEFT(A1:A4,1)="x",VALUE(MID(A1:A4,2,9))))'), 7),
    }
    _assert_passes(_judge(tmp_path, data, answers))


def test_double_minus_turns_booleans_into_numbers(tmp_path):
    data = {"A1": "a", "A2": "b", "A3": "a", "B1": True}
    answers = {
        "D1": ('=SUMPRODUCT(--(A1:A3="a"))', 2),
        "D2": ("=--B1", 1),
        "D3": ('=SUMPRODUCT(--ISNUMBER(SEARCH("a",A1:A3)))', 2),
        "D4": ("=-B1", -1),
        "D5": ("=+B1", True),  # a single plus changes nothing, as in Excel
        "D6": ("=--B1^2", 1),
    }
    _assert_passes(_judge(tmp_path, data, answers))


def test_rows_of_a_range_that_holds_the_formula_itself(tmp_path):
    # ROWS($A$2:A2) in A2 only needs the range's size: Excel has no cycle there.
    data = {"B2": "x", "B3": "y", "B5": "z"}
    answers = {
        "A2": ('=IF(B2="","",ROWS($A$2:A2))', 1),
        "A3": ('=IF(B3="","",ROWS($A$2:A3))', 2),
        "A4": ('=IF(B4="","",ROWS($A$2:A4))', ""),
        "A5": ('=IF(B5="","",ROWS($A$2:A5))', 4),
        "C2": ("=COLUMNS($C$2:E2)+ROW()+COLUMN(D9)", 9),
        "C3": ('=CELL("row",B5:B9)+CELL("col",B5)+ROWS(A:A)', 1048583),
    }
    _assert_passes(_judge(tmp_path, data, answers))


def _sales_table(sheet):
    rows = [("Region", "Qty", "Price"), ("East", 2, 10), ("West", 3, 20), ("East", 5, 1)]
    for row in rows:
        sheet.append(row)
    sheet.add_table(Table(displayName="Sales", ref="A1:C4"))


def test_structured_references_become_ranges(tmp_path):
    answers = {
        "D2": ("=Sales[[#This Row],[Qty]]*Sales[[#This Row],[Price]]", 20),
        "D3": ("=Sales[@Qty]*Sales[@Price]", 60),
        "F1": ("=SUM(Sales[Qty])", 10),
        "F2": ('=COUNTIFS(Sales[Region],"East")', 2),
        "F3": ("=ROWS(Sales[#Data])+ROWS(Sales[#All])", 7),
        "F4": ("=Sales[[#Headers],[Price]]", "Price"),
        "F5": ("=SUM(Sales[[Qty]:[Price]])", 41),
        "F6": ("=SUMPRODUCT(sales[qty],SALES[PRICE])", 85),  # names ignore case
    }
    _assert_passes(_judge(tmp_path, {}, answers, prepare=_sales_table))


def test_an_array_formula_gives_each_cell_of_its_range_a_value(tmp_path):
    data = {"A1": 3, "A2": 1, "A3": 2}
    output = openpyxl.Workbook()
    gold = openpyxl.Workbook()
    for coordinate, value in data.items():
        output.active[coordinate] = gold.active[coordinate] = value
    for row, value in enumerate([6, 2, 4], start=1):
        gold.active.cell(row, 2, value)
    output.active["B1"] = ArrayFormula("B1:B3", "=A1:A3*2")  # B2 and B3 stay empty in the file
    gold.save(tmp_path / "gold.xlsx")
    output.save(tmp_path / "output.xlsx")
    case = TestCase("1", tmp_path / "input.xlsx", tmp_path / "gold.xlsx")
    task = Task("t", "do it", CELL_LEVEL, "B1:B3", None, None, "test", (case,))
    _assert_passes(check_case(task, case, tmp_path / "output.xlsx", engine="formulas"))


def test_unsupported_features_fail_with_their_reason(tmp_path):
    data = {"A1": 1, "A2": 2}
    answers = {
        "B1": ('=IFERROR(OFFSET(A1,1,0),"")', ""),  # IFERROR must not hide the missing OFFSET
        "B2": ('=B1&"!"', "!"),  # nor may a cell computed from it pass
        "B3": ("=SUM(Nowhere[Qty])", 0),
        "B4": ("=SUM(NoSuchName)", 0),
        "B5": ("=A1+A2", 3),
    }
    result = _judge(tmp_path, data, answers)
    assert result.judge == "formulas" and not result.passed
    got = {mismatch.cell: mismatch.got for mismatch in result.mismatches}
    assert set(got) == {"B1", "B2", "B3", "B4"}
    assert got["B1"].startswith("OFFSET is not supported by the formulas engine")
    assert "install LibreOffice" in got["B1"]
    assert "OFFSET is not supported" in got["B2"] and "(in SHEET!B1)" in got["B2"]
    assert got["B3"] == (
        "structured reference Nowhere[Qty] cannot be resolved: no table named Nowhere"
    )
    assert got["B4"].startswith("the name NOSUCHNAME is not defined")
