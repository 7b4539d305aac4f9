import datetime as dt
import json
import os
import stat
import sys
import textwrap

import openpyxl
import pytest
from openpyxl.packaging.relationship import Relationship
from openpyxl.workbook.external_link.external import (
    ExternalBook,
    ExternalCell,
    ExternalLink,
    ExternalRow,
    ExternalSheetData,
    ExternalSheetDataSet,
    ExternalSheetNames,
)

from t2s import checker, formula_rewrite
from t2s.checker import (
    MISMATCH_CAP,
    CellRange,
    check_case,
    check_task,
    normalize,
    parse_answer_position,
    values_match,
)
from t2s.errors import TaskError
from t2s.tasks import CELL_LEVEL, SHEET_LEVEL, Task, TestCase

# --- answer_position ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A1:C3", [("S", 1, 1, 3, 3)]),
        ("'Sheet1'!A2:A19", [("Sheet1", 1, 2, 1, 19)]),
        ("D2", [("S", 4, 2, 4, 2)]),
        ("D1,D5,D9", [("S", 4, 1, 4, 1), ("S", 4, 5, 4, 5), ("S", 4, 9, 4, 9)]),
        ("'Sales, 2024'!B2:B5,C2", [("Sales, 2024", 2, 2, 2, 5), ("S", 3, 2, 3, 2)]),
        ("'Bob''s Data'!A1:B2", [("Bob's Data", 1, 1, 2, 2)]),
        ("'Q1, ''24'!A1,'Q2'!B1", [("Q1, '24", 1, 1, 1, 1), ("Q2", 2, 1, 2, 1)]),
        ("A:G", [("S", 1, 1, 7, None)]),
        ("'Data'!C:C", [("Data", 3, 1, 3, None)]),
        ("2:5", [("S", 1, 2, None, 5)]),
        ("$B$2:$C$4", [("S", 2, 2, 3, 4)]),
        ("\xa0'Sheet1'!A1\xa0:\xa0B2 ", [("Sheet1", 1, 1, 2, 2)]),
        ("A1: D2", [("S", 1, 1, 4, 2)]),
        ("Sheet1'!G2:I7", [("Sheet1", 7, 2, 9, 7)]),
        (
            "'PL Recon Items!'A1:D2,'Statement Recon Items!'A1:J3",
            [("PL Recon Items", 1, 1, 4, 2), ("Statement Recon Items", 1, 1, 10, 3)],
        ),
        ("'Sheet1'!BD2:308", [("Sheet1", 56, 2, 56, 308)]),
        ("c5:a1", [("S", 1, 1, 3, 5)]),
        ("Sheet 2!A1", [("Sheet 2", 1, 1, 1, 1)]),
    ],
)
def test_parse_answer_position_traps(text, expected):
    assert parse_answer_position(text, "S") == [CellRange(*item) for item in expected]


@pytest.mark.parametrize("text", ["", " , ", "A", "1", "A1:B2:C3", "'S'!", "A0", "XFE1"])
def test_parse_answer_position_rejects_nonsense(text):
    with pytest.raises(TaskError, match="answer_position"):
        parse_answer_position(text, "S")


# --- normalisation -----------------------------------------------------------------------------


def test_numbers_round_to_two_decimals():
    assert normalize(3) == 3.0 and isinstance(normalize(3), float)
    assert values_match(3.14159, 3.14)
    assert values_match(2, 2.001)
    assert not values_match(2, 2.01)
    assert values_match(8.025, 8.024999999999999)  # float noise never changes the cents


def test_numeric_strings_compare_as_numbers_but_not_loose_text():
    assert values_match("3.14159", 3.14)
    assert values_match(" 42 ", 42)
    assert values_match("1e3", 1000)
    assert normalize("1_000") == "1_000"  # Python's float() would accept it; Excel would not
    assert normalize("nan") == "nan"
    assert not values_match("1,000", 1000)


def test_datetimes_become_excel_serial_days():
    assert normalize(dt.datetime(2024, 1, 1)) == 45292.0
    assert normalize(dt.date(2024, 1, 1)) == 45292.0
    assert values_match(dt.datetime(2024, 1, 1), 45292)  # a date and its serial number agree
    assert values_match(dt.datetime(2024, 1, 1, 9, 30), dt.datetime(2024, 1, 1))  # whole days
    assert not values_match(dt.datetime(2024, 1, 2), dt.datetime(2024, 1, 1))


def test_times_become_hours_and_minutes():
    assert normalize(dt.time(9, 5, 59)) == "09:05"
    assert values_match(dt.time(14, 30), "14:30")
    assert not values_match(dt.time(14, 31), "14:30")


def test_empty_string_equals_empty_cell():
    assert values_match(None, "")
    assert values_match("", None)
    assert values_match(None, None)
    assert not values_match(None, 0)
    assert not values_match(None, " x")


def test_other_values_must_match_type_and_value():
    assert values_match("Paid", "Paid")
    assert not values_match("Paid", "paid")
    assert not values_match("Paid", "Paid ")
    assert not values_match(True, 1)
    assert values_match(True, True)


# --- workbooks ---------------------------------------------------------------------------------


def _book(path, cells, sheet="Sheet1", extra_sheets=()):
    workbook = openpyxl.Workbook()
    workbook.active.title = sheet
    for name in extra_sheets:
        workbook.create_sheet(name)
    for key, value in cells.items():
        name, coordinate = key.split("!") if "!" in key else (sheet, key)
        workbook[name][coordinate] = value
    workbook.save(path)
    return path


def _task(tmp_path, answer_position, gold_cells, answer_sheet=None, cases=1, **book_args):
    test_cases = []
    for number in range(1, cases + 1):
        gold = _book(tmp_path / f"{number}_gold.xlsx", gold_cells, **book_args)
        test_cases.append(TestCase(str(number), tmp_path / f"{number}_in.xlsx", gold))
    level = SHEET_LEVEL if answer_sheet else CELL_LEVEL
    return Task("t", "do it", level, answer_position, answer_sheet, None, "test", tuple(test_cases))


BASE = {"A1": 1, "A2": 2, "A3": 3}


def test_matching_values_pass_with_the_values_judge(tmp_path):
    task = _task(tmp_path, "B1:B2", {**BASE, "B1": 6, "B2": "ok"})
    output = _book(tmp_path / "out.xlsx", {**BASE, "B1": 6.0, "B2": "ok"})
    result = check_case(task, task.cases[0], output)
    assert result.passed and result.judge == "values" and result.error is None
    assert result.cells_checked == 2


def test_a_wrong_cell_is_reported_with_expected_and_got(tmp_path):
    task = _task(tmp_path, "B1:B2", {**BASE, "B1": 6, "B2": "ok"})
    output = _book(tmp_path / "out.xlsx", {**BASE, "B1": 7, "B2": "ok"})
    result = check_case(task, task.cases[0], output)
    assert not result.passed
    assert [m.to_dict() for m in result.mismatches] == [
        {"sheet": "Sheet1", "cell": "B1", "expected": 6, "got": 7, "formula": None}
    ]


def test_whole_column_range_is_bounded_by_the_used_range(tmp_path):
    task = _task(tmp_path, "A:A", BASE)
    assert check_case(task, task.cases[0], _book(tmp_path / "ok.xlsx", BASE)).passed
    extra = _book(tmp_path / "extra.xlsx", {**BASE, "A7": "stray"})
    result = check_case(task, task.cases[0], extra)
    assert not result.passed and [m.cell for m in result.mismatches] == ["A7"]


def test_whole_row_range(tmp_path):
    gold = {"A2": "x", "C2": "y"}
    task = _task(tmp_path, "2:2", gold)
    assert check_case(task, task.cases[0], _book(tmp_path / "ok.xlsx", gold)).passed
    result = check_case(task, task.cases[0], _book(tmp_path / "bad.xlsx", {**gold, "E2": 1}))
    assert [m.cell for m in result.mismatches] == ["E2"]


def test_ranges_on_several_sheets_and_the_answer_sheet_default(tmp_path):
    cells = {"Out, 1!B2": 5, "Other!A1": "z"}
    task = _task(
        tmp_path,
        "'Out, 1'!B2,A1",
        cells,
        answer_sheet="Other",
        sheet="Out, 1",
        extra_sheets=["Other"],
    )
    assert check_case(
        task,
        task.cases[0],
        _book(tmp_path / "ok.xlsx", cells, sheet="Out, 1", extra_sheets=["Other"]),
    ).passed
    wrong = {"Out, 1!B2": 5, "Other!A1": "q"}
    result = check_case(
        task,
        task.cases[0],
        _book(tmp_path / "bad.xlsx", wrong, sheet="Out, 1", extra_sheets=["Other"]),
    )
    assert [(m.sheet, m.cell) for m in result.mismatches] == [("Other", "A1")]


def test_sheet_names_match_without_case(tmp_path):
    task = _task(tmp_path, "'SHEET1'!A1", {"A1": 1})
    assert check_case(task, task.cases[0], _book(tmp_path / "o.xlsx", {"A1": 1})).passed


def test_missing_sheet_corrupt_and_absent_outputs_fail_with_a_reason(tmp_path):
    task = _task(tmp_path, "'Result'!A1", {"Result!A1": 1}, sheet="Result")
    missing_sheet = _book(tmp_path / "o.xlsx", {"A1": 1}, sheet="Other")
    result = check_case(task, task.cases[0], missing_sheet)
    assert not result.passed and "no sheet 'Result'" in result.error
    corrupt = tmp_path / "corrupt.xlsx"
    corrupt.write_text("not a zip")
    result = check_case(task, task.cases[0], corrupt)
    assert not result.passed and "cannot be read" in result.error
    result = check_case(task, task.cases[0], tmp_path / "absent.xlsx")
    assert not result.passed and "does not exist" in result.error


def test_mismatch_report_is_capped_but_counts_everything(tmp_path):
    gold = {f"A{row}": row for row in range(1, 121)}
    task = _task(tmp_path, "A1:A120", gold)
    output = _book(tmp_path / "o.xlsx", {f"A{row}": -row for row in range(1, 121)})
    result = check_case(task, task.cases[0], output)
    assert result.mismatch_count == 120
    assert len(result.mismatches) == MISMATCH_CAP
    assert len(result.to_dict()["mismatches"]) == MISMATCH_CAP


def test_check_task_scores_soft_and_hard(tmp_path):
    task = _task(tmp_path, "A1", {"A1": 1}, cases=3)
    good = _book(tmp_path / "good.xlsx", {"A1": 1})
    bad = _book(tmp_path / "bad.xlsx", {"A1": 2})
    result = check_task(task, {"1": good, "2": bad, "3": good})
    assert result.soft == pytest.approx(2 / 3) and result.hard is False
    assert check_task(task, {"1": good, "2": good, "3": good}).hard is True
    partial = check_task(task, {"1": good})
    assert partial.soft == pytest.approx(1 / 3)
    assert "no output for test case 2" in partial.cases[1].error
    assert json.loads(json.dumps(result.to_dict()))["cases"][1]["passed"] is False


def test_dates_in_gold_match_dates_in_output(tmp_path):
    task = _task(tmp_path, "A1:B1", {"A1": dt.datetime(2024, 3, 1), "B1": dt.time(8, 15)})
    output = _book(tmp_path / "o.xlsx", {"A1": dt.datetime(2024, 3, 1), "B1": "08:15"})
    result = check_case(task, task.cases[0], output)
    assert result.passed
    bad = _book(tmp_path / "b.xlsx", {"A1": dt.datetime(2024, 3, 2), "B1": "08:15"})
    mismatch = check_case(task, task.cases[0], bad).mismatches[0]
    assert mismatch.to_dict()["expected"] == "2024-03-01T00:00:00"


# --- formulas ----------------------------------------------------------------------------------


@pytest.fixture
def no_libreoffice(monkeypatch):
    monkeypatch.setattr(checker, "libreoffice_binary", lambda: None)


def test_a_correct_formula_passes_only_after_evaluation(tmp_path, no_libreoffice):
    task = _task(tmp_path, "B1", {**BASE, "B1": 6})
    output = _book(tmp_path / "o.xlsx", {**BASE, "B1": "=SUM(A1:A3)"})
    # openpyxl writes no result for the formula: read as values, the cell is empty.
    assert openpyxl.load_workbook(output, data_only=True).active["B1"].value is None
    result = check_task(task, {"1": output})
    assert result.hard and result.judge == "formulas" and result.cases[0].judge == "formulas"


def test_a_wrong_formula_fails_with_its_value_and_text(tmp_path, no_libreoffice):
    task = _task(tmp_path, "B1", {**BASE, "B1": 6})
    output = _book(tmp_path / "o.xlsx", {**BASE, "B1": "=SUM(A1:A2)"})
    result = check_case(task, task.cases[0], output, engine="formulas")
    assert not result.passed
    (mismatch,) = result.mismatches
    assert (mismatch.expected, mismatch.got, mismatch.formula) == (6, 3.0, "=SUM(A1:A2)")


def test_an_unknown_function_never_passes_an_empty_gold_cell(tmp_path, no_libreoffice):
    task = _task(tmp_path, "B1", BASE)  # gold B1 is empty
    output = _book(tmp_path / "o.xlsx", {**BASE, "B1": '=IFERROR(NOSUCHFUNCTION(A1),"")'})
    result = check_case(task, task.cases[0], output)
    assert not result.passed
    assert "NOSUCHFUNCTION is not supported" in str(result.mismatches[0].got)


def test_an_engine_failure_fails_the_formula_cells_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(checker, "libreoffice_binary", lambda: None)

    def broken(path, cells):
        raise checker._EvaluationFailed("engine exploded")

    monkeypatch.setattr(checker, "_evaluate_with_formulas", broken)
    task = _task(tmp_path, "B1:B2", {**BASE, "B2": 7})  # B1 empty in gold: must still fail
    output = _book(tmp_path / "o.xlsx", {**BASE, "B1": "=A1*0", "B2": 7})
    result = check_case(task, task.cases[0], output)
    assert not result.passed and result.mismatch_count == 1
    assert "could not be evaluated" in result.mismatches[0].got
    assert "engine exploded" in result.mismatches[0].got


def _fake_soffice(directory, body):
    """An executable named soffice that runs `body` (Python) with the real interpreter."""
    directory.mkdir()
    script = directory / "soffice"
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


# Converts like LibreOffice would: every formula replaced by its value (here, a known one).
CONVERTING_SOFFICE = """
    import sys, pathlib, openpyxl
    args = sys.argv[1:]
    assert any(a.startswith("-env:UserInstallation=file://") for a in args), args
    profile = next(a for a in args if a.startswith("-env:")).split("file://", 1)[1]
    assert "OOXMLRecalcMode" in pathlib.Path(profile, "user", "registrymodifications.xcu").read_text()
    outdir = pathlib.Path(args[args.index("--outdir") + 1])
    source = pathlib.Path(args[-1])
    book = openpyxl.load_workbook(source)
    for sheet in book:
        for row in sheet.iter_rows():
            for cell in row:
                if isinstance(cell.value, str) and cell.value.startswith("="):
                    cell.value = 6
    outdir.mkdir(parents=True, exist_ok=True)
    book.save(outdir / source.name)
"""


def test_libreoffice_recalculates_when_installed(tmp_path, monkeypatch):
    _fake_soffice(tmp_path / "bin", CONVERTING_SOFFICE)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    task = _task(tmp_path, "B1", {**BASE, "B1": 6})
    output = _book(tmp_path / "o.xlsx", {**BASE, "B1": "=SUM(A1:A3)"})
    result = check_case(task, task.cases[0], output)
    assert result.passed and result.judge == "libreoffice"


def test_a_failing_libreoffice_falls_back_to_formulas(tmp_path, monkeypatch):
    _fake_soffice(tmp_path / "bin", "import sys\nsys.exit(3)\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    task = _task(tmp_path, "B1", {**BASE, "B1": 6})
    output = _book(tmp_path / "o.xlsx", {**BASE, "B1": "=SUM(A1:A3)"})
    result = check_case(task, task.cases[0], output)
    assert result.passed and result.judge == "formulas"
    only_libreoffice = check_case(task, task.cases[0], output, engine="libreoffice")
    assert not only_libreoffice.passed
    assert "exit 3" in only_libreoffice.mismatches[0].got


def test_unknown_engine_is_refused(tmp_path):
    task = _task(tmp_path, "A1", {"A1": 1})
    with pytest.raises(TaskError, match="formula engine"):
        check_case(task, task.cases[0], tmp_path / "x.xlsx", engine="excel")


def test_formulas_follow_dependencies_across_sheets(tmp_path, no_libreoffice):
    # The answer's formula reads another sheet whose own cells are formulas with no results.
    cells = {"Data, 1!A1": 2, "Data, 1!A2": 3, "Data, 1!B1": "=A1*A2", "Out!A1": None}
    gold = {"Data, 1!A1": 2, "Data, 1!A2": 3, "Out!A1": 60}
    task = _task(tmp_path, "'Out'!A1", gold, sheet="Data, 1", extra_sheets=["Out"])
    output = {**cells, "Out!A1": "='Data, 1'!B1*10"}
    result = check_case(
        task,
        task.cases[0],
        _book(tmp_path / "o.xlsx", output, sheet="Data, 1", extra_sheets=["Out"]),
    )
    assert result.passed and result.judge == "formulas", result.to_dict()


def test_a_formula_engine_that_runs_too_long_fails_the_cells(tmp_path, monkeypatch, no_libreoffice):
    monkeypatch.setattr(checker, "FORMULAS_TIMEOUT", 0.01)
    task = _task(tmp_path, "B1", {**BASE, "B1": 6})
    output = _book(tmp_path / "o.xlsx", {**BASE, "B1": "=SUM(A1:A3)"})
    result = check_case(task, task.cases[0], output)
    assert not result.passed and "timed out" in result.mismatches[0].got


def test_formulas_are_rewritten_for_the_engine():
    book = openpyxl.Workbook()
    book.active.title = "Data"
    book.active["F20"] = 1  # the used range: A1:F20
    rewrite = formula_rewrite.FormulaRewriter(book).rewrite

    def rewritten(formula):
        return rewrite(formula, "Data", 2, 1)

    # Whole columns and rows are cut to the used range.
    assert rewritten("=SUMIF(C:C,H2,F:F)") == "=SUMIF(C1:C20,H2,F1:F20)"
    assert rewritten("=SUM('My, Sheet'!$A:$B)") == "=SUM('My, Sheet'!$A1:$B20)"
    assert rewritten("=SUM($1:1)") == "=SUM(A$1:F1)"
    assert rewritten('="C:C"&A1') == '="C:C"&A1'  # text is not a reference
    assert rewritten("=SUM(A1:B2)") == "=SUM(A1:B2)"
    # Functions of a reference's position become numbers, before the cut.
    assert rewritten("=ROWS($A$2:A2)+COLUMNS(B:D)+ROWS(A:A)") == "=1+3+1048576"
    assert rewritten("=ROW(B7)*COLUMN(Data!C1)") == "=7*3"
    assert rewritten("=SMALL(ROW(A2:A5),1)") == "=SMALL(SEQUENCE(4,1,2),1)"
    assert rewritten('=CELL("row",B5:B9)') == "=5"
    assert rewritten("=ROW(A1:A5*2)") == "=ROW(A1:A5*2)"  # not a plain reference
    # `--` turns booleans into numbers in Excel; the engine would fold it into a `+`.
    assert rewritten("=SUMPRODUCT(--(A1:A3=1))") == "=SUMPRODUCT(-(-((A1:A3=1))))"
    assert rewritten("=--A1:A3+-B1") == "=-(-(A1:A3))+-B1"
    # Empty arguments whose Excel default is not 0.
    assert rewritten("=SORT(A1:A9,,-1)") == "=SORT(A1:A9,1,-1)"


def _link_to_rates(book):
    """An external link to rates.xlsx, with the values Excel cached for its sheet Rates."""
    cells = [ExternalCell(r="B2", v="0.25"), ExternalCell(r="C2", t="s", v="low")]
    cached = ExternalSheetData(sheetId=0, row=[ExternalRow(r=2, cell=cells)])
    link = ExternalLink(
        externalBook=ExternalBook(
            sheetNames=ExternalSheetNames(sheetName=["Rates", "Empty"]),
            sheetDataSet=ExternalSheetDataSet(sheetData=[cached]),
            id="rId1",
        )
    )
    link.file_link = Relationship(
        type="externalLinkPath", Target="rates.xlsx", TargetMode="External", Id="rId1"
    )
    book._external_links.append(link)


def test_references_to_another_workbook_read_the_values_excel_cached(tmp_path, no_libreoffice):
    task = _task(tmp_path, "B1:B3", {**BASE, "B1": 1, "B2": "low", "B3": 0})
    output = openpyxl.Workbook()
    output.active.title = "Sheet1"
    _link_to_rates(output)
    for coordinate, value in BASE.items():
        output.active[coordinate] = value
    output.active["B1"] = "=[1]Rates!B2*4"
    output.active["B2"] = "=[1]Rates!C2"
    output.active["B3"] = "=SUM([1]Rates!B3:C9)"  # cells not cached were empty
    output.save(tmp_path / "o.xlsx")
    result = check_case(task, task.cases[0], tmp_path / "o.xlsx")
    assert result.passed, result.to_dict()

    output.active["B3"] = '=IFERROR([1]Empty!A1,"")'  # nothing cached for that sheet
    output.save(tmp_path / "o.xlsx")
    result = check_case(task, task.cases[0], tmp_path / "o.xlsx")
    assert not result.passed
    assert result.mismatches[0].got == (
        "external workbook reference [1]Empty!A1 has no cached values "
        "(the other workbook is not available)"
    )


def test_a_whole_column_formula_is_evaluated(tmp_path, no_libreoffice):
    gold = {"A1": "x", "B1": 1, "A2": "y", "B2": 2, "A3": "x", "B3": 4, "D1": 5}
    task = _task(tmp_path, "D1", gold)
    output = _book(tmp_path / "o.xlsx", {**gold, "D1": '=SUMIF(A:A,"x",B:B)'})
    assert check_case(task, task.cases[0], output).passed
