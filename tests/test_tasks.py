import json

import openpyxl
import pytest
from click.testing import CliRunner

from t2s.cli import main
from t2s.errors import TaskError
from t2s.tasks import (
    CELL_LEVEL,
    SHEET_LEVEL,
    Task,
    get_task,
    load_suite,
    preview_workbook,
    split_tasks,
)


def _workbook(path, value="x"):
    workbook = openpyxl.Workbook()
    workbook.active["A1"] = "Header"
    workbook.active["A2"] = value
    workbook.save(path)


def _suite(root, entries, files):
    """A suite directory: dataset.json from `entries`, workbooks at the relative `files`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(entries))
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        _workbook(root / name)
    return root


def _entry(task_id, **extra):
    return {
        "id": task_id,
        "instruction": f"Solve {task_id}.",
        "spreadsheet_path": f"spreadsheet/{task_id}",
        "instruction_type": CELL_LEVEL,
        "answer_position": "B2",
        **extra,
    }


def test_three_namings_load(tmp_path):
    root = _suite(
        tmp_path / "suite",
        [
            _entry("multi", kind="totals"),
            _entry(
                "verified",
                instruction_type=SHEET_LEVEL,
                answer_sheet="Sheet1",
                data_position="A1:B3",
            ),
            _entry("bare"),
        ],
        [
            *(
                f"spreadsheet/multi/{n}_multi_{role}.xlsx"
                for n in (1, 2, 3)
                for role in ("input", "answer")
            ),
            "spreadsheet/verified/1_verified_init.xlsx",
            "spreadsheet/verified/1_verified_golden.xlsx",
            "spreadsheet/bare/initial.xlsx",
            "spreadsheet/bare/golden.xlsx",
        ],
    )
    suite = load_suite(root)
    assert suite.name == "suite" and suite.path == root
    multi, verified, bare = suite.tasks
    assert [case.name for case in multi.cases] == ["1", "2", "3"]
    assert multi.cases[2].input_path == root / "spreadsheet/multi/3_multi_input.xlsx"
    assert multi.cases[2].answer_path == root / "spreadsheet/multi/3_multi_answer.xlsx"
    assert multi.kind == "totals"  # our own suite's field wins
    assert verified.kind == "sheet-level" and verified.answer_sheet == "Sheet1"
    assert verified.data_position == "A1:B3" and verified.is_sheet_level
    assert verified.cases[0].answer_path.name == "1_verified_golden.xlsx"
    assert bare.kind == "cell-level" and bare.answer_sheet is None
    assert bare.cases[0].input_path.name == "initial.xlsx"
    assert {task.suite for task in suite.tasks} == {"suite"}
    assert Task.from_dict(json.loads(json.dumps(multi.to_dict()))) == multi


def test_workbooks_pair_by_case_number_despite_a_typo_in_the_id(tmp_path):
    root = _suite(
        tmp_path / "s",
        [_entry("42930")],
        ["spreadsheet/42930/1_42930_init.xlsx", "spreadsheet/42930/1_43930_golden.xlsx"],
    )
    (case,) = load_suite(root).tasks[0].cases
    assert case.answer_path.name == "1_43930_golden.xlsx"


def test_an_input_without_its_answer_is_not_a_case(tmp_path):
    root = _suite(
        tmp_path / "s",
        [_entry("t")],
        [
            "spreadsheet/t/1_t_input.xlsx",
            "spreadsheet/t/1_t_answer.xlsx",
            "spreadsheet/t/2_t_input.xlsx",
        ],
    )
    assert [case.name for case in load_suite(root).tasks[0].cases] == ["1"]


def test_spreadsheet_path_is_relative_to_the_suite(tmp_path):
    root = _suite(
        tmp_path / "s",
        [_entry("t", spreadsheet_path="books/elsewhere")],
        ["books/elsewhere/initial.xlsx", "books/elsewhere/golden.xlsx"],
    )
    assert load_suite(root).tasks[0].cases[0].input_path == root / "books/elsewhere/initial.xlsx"


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, "not found"),
        (lambda root: root.mkdir(), "dataset.json is missing"),
        (lambda root: (root.mkdir(), (root / "dataset.json").write_text("[{")), "not valid JSON"),
        (lambda root: (root.mkdir(), (root / "dataset.json").write_text("{}")), "JSON list"),
        (lambda root: _suite(root, [{"id": "t"}], []), "has no 'instruction'"),
        (lambda root: _suite(root, ["oops"], []), "is not a JSON object"),
        (lambda root: _suite(root, [_entry("t")], []), "folder .* is missing"),
        (
            lambda root: _suite(root, [_entry("t")], ["spreadsheet/t/notes.xlsx"]),
            "no input/answer workbook pair",
        ),
        (
            lambda root: _suite(
                root,
                [_entry("t"), _entry("t")],
                ["spreadsheet/t/initial.xlsx", "spreadsheet/t/golden.xlsx"],
            ),
            "appears twice",
        ),
    ],
)
def test_bad_suites_give_one_line_task_errors(tmp_path, setup, message):
    root = tmp_path / "bad"
    setup(root)
    with pytest.raises(TaskError, match=message) as raised:
        load_suite(root)
    assert "\n" not in str(raised.value)


def test_get_task(tmp_path):
    suite = load_suite("bundled")
    assert get_task(suite, suite.tasks[3].id) is suite.tasks[3]
    with pytest.raises(TaskError, match="no task 'missing'"):
        get_task(suite, "missing")


def _many_tasks(count):
    return [Task(f"task-{n}", "", CELL_LEVEL, "A1", None, None, "k", ()) for n in range(count)]


def test_splits_are_deterministic_disjoint_and_covering():
    tasks = _many_tasks(400)
    train, test = split_tasks(tasks, "train"), split_tasks(tasks, "test")
    assert {t.id for t in train}.isdisjoint({t.id for t in test})
    assert len(train) + len(test) == 400
    assert 160 < len(train) < 240
    assert [t.id for t in split_tasks(list(reversed(tasks)), "train")] == [
        t.id for t in reversed(train)
    ]  # membership depends on the id only, not on order or neighbours
    assert split_tasks(tasks, "all") == tasks


def test_split_ratio_moves_tasks_into_train_only():
    tasks = _many_tasks(300)
    small = {t.id for t in split_tasks(tasks, "train", ratio=0.2)}
    large = {t.id for t in split_tasks(tasks, "train", ratio=0.8)}
    assert small < large and 30 < len(small) < 90 and 210 < len(large) < 270
    assert split_tasks(tasks, "train", ratio=0.0) == []
    assert split_tasks(tasks, "test", ratio=1.0) == []


@pytest.mark.parametrize("which, ratio", [("dev", 0.5), ("train", 1.5), ("test", -0.1)])
def test_bad_split_arguments(which, ratio):
    with pytest.raises(TaskError):
        split_tasks(_many_tasks(3), which, ratio)


def test_preview_workbook(tmp_path):
    _workbook(tmp_path / "w.xlsx", value="hello")
    (sheet,) = preview_workbook(tmp_path / "w.xlsx")
    assert sheet.rows == [["Header"], ["hello"]] and sheet.max_row == 2
    (tmp_path / "broken.xlsx").write_text("no")
    with pytest.raises(TaskError, match="cannot be read"):
        preview_workbook(tmp_path / "broken.xlsx")


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_tasks_list_counts_by_kind():
    result = CliRunner().invoke(main, ["tasks", "list", "bundled"])
    assert result.exit_code == 0, result.output
    suite = load_suite("bundled")
    assert f"{len(suite.tasks)} tasks (all split of {len(suite.tasks)})" in result.output
    kinds = suite.kinds()
    assert f"lookup {kinds['lookup']}" in result.output
    assert "totals-sum-amount" in result.output


def test_cli_tasks_list_splits_partition_the_suite():
    runner = CliRunner()
    ids = {}
    for which in ("train", "test"):
        result = runner.invoke(
            main, ["tasks", "list", "bundled", "--split", which, "--ratio", "0.6"]
        )
        assert result.exit_code == 0, result.output
        ids[which] = {
            line.split()[0]
            for line in result.output.splitlines()[1:]
            if line.strip() and not line.split()[0].isdigit()
        }
    assert ids["train"].isdisjoint(ids["test"])
    assert ids["train"] | ids["test"] == {task.id for task in load_suite("bundled").tasks}


def test_cli_tasks_show_prints_the_task_and_a_preview():
    result = CliRunner().invoke(main, ["tasks", "show", "bundled", "crosssheet-comma-sheet"])
    assert result.exit_code == 0, result.output
    assert "answer position: 'Totals, 2024'!B2:C5" in result.output
    assert "3_crosssheet-comma-sheet_answer.xlsx" in result.output
    assert "sheet 'Totals, 2024'" in result.output
    assert "Region | Orders | Amount" in result.output


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["tasks", "show", "bundled", "no-such-task"])
    assert result.exit_code == 1 and "Error: no task 'no-such-task'" in result.output
    result = runner.invoke(main, ["tasks", "list", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "Error: task suite" in result.output
    assert "Traceback" not in result.output
