"""The spreadsheet agent with a scripted model on a small suite built here."""

import json
import os

import pytest
from openpyxl import Workbook, load_workbook
from scripted import ScriptedModel

from t2s.agent import WORKBOOK, AgentBudget, run_agent
from t2s.errors import ModelError
from t2s.sandbox import SandboxLimits
from t2s.skill import Skill
from t2s.tasks import load_suite

CASE_DATA = {"1": [10, 20, 30], "2": [1, 2, 3.5], "3": [100, -5, 7]}
SKILL_MD = """---
name: tiny-sheets
description: Totals in small sheets.
---
# Tiny sheets

## Workflow

Look first, then write one formula.

## Totals

Use =SUM over the data rows. See [formulas](references/formulas.md).
"""
LIMITS = SandboxLimits(seconds=10)


def make_suite(root, task_ids=("sum-amounts",), data=CASE_DATA):
    """A suite in the SpreadsheetBench layout: put the total of Data!A2:A4 in A5; 3 cases."""
    entries = []
    for task_id in task_ids:
        folder = root / "spreadsheet" / task_id
        folder.mkdir(parents=True)
        for name, numbers in data.items():
            for role, total in (("input", None), ("answer", sum(numbers))):
                workbook = Workbook()
                sheet = workbook.active
                sheet.title = "Data"
                sheet["A1"] = "Amount"
                for row, number in enumerate(numbers, start=2):
                    sheet.cell(row=row, column=1, value=number)
                sheet["A5"] = total
                workbook.save(folder / f"{name}_{task_id}_{role}.xlsx")
        entries.append(
            {
                "id": task_id,
                "instruction": "Put the total of the amounts (A2:A4) in A5 of sheet Data.",
                "spreadsheet_path": f"spreadsheet/{task_id}",
                "instruction_type": "Cell-Level Manipulation",
                "answer_position": "Data!A5",
                "kind": "totals",
            }
        )
    (root / "dataset.json").write_text(json.dumps(entries))
    return load_suite(root)


def make_skill(root):
    (root / "references").mkdir(parents=True)
    (root / "SKILL.md").write_text(SKILL_MD)
    (root / "references" / "formulas.md").write_text("# Formulas\n\nSUM adds a range.\n")
    return Skill.from_dir(root)


@pytest.fixture
def task(tmp_path):
    return make_suite(tmp_path / "suite").tasks[0]


@pytest.fixture
def skill(tmp_path):
    return make_skill(tmp_path / "skill")


def step(tool, args, section=""):
    return {"thought": "t", "section": section, "tool": tool, "args": args}


FINISH = step("finish", {"summary": "done"})


def rollout(model, task, skill, tmp_path, **options):
    return run_agent(
        model,
        task,
        skill,
        workdir=tmp_path / "work",
        skill_ref="skill-dir",
        skill_commit="abc123",
        budget=options.pop("budget", AgentBudget(turns=8)),
        sandbox_limits=LIMITS,
        run_id="run-1",
        **options,
    )


def test_a_formula_solution_solves_every_case_through_replay(task, skill, tmp_path):
    model = ScriptedModel(
        [
            step("inspect_workbook", {}, "Workflow"),
            step("write_cells", {"sheet": "Data", "cells": {"A5": "=SUM(A2:A4)"}}, "Totals"),
            FINISH,
        ]
    )
    trajectory = rollout(model, task, skill, tmp_path)
    assert trajectory.score == 1.0 and trajectory.hard and trajectory.label == "success"
    assert trajectory.judge in ("formulas", "libreoffice")
    assert trajectory.mismatches == [] and trajectory.error == ""
    assert sorted(trajectory.outputs) == ["1", "2", "3"]
    for path in trajectory.outputs.values():
        assert load_workbook(path)["Data"]["A5"].value == "=SUM(A2:A4)"
    assert trajectory.output_path == trajectory.outputs["1"]
    assert trajectory.stopped == "finish" and trajectory.turns == 3
    assert (trajectory.task_id, trajectory.case, trajectory.run_id) == (task.id, "1", "run-1")
    assert (trajectory.skill_ref, trajectory.skill_commit, trajectory.model) == (
        "skill-dir",
        "abc123",
        "scripted",
    )
    assert trajectory.instruction == task.instruction
    # The task's own input was never touched: the agent worked on a copy.
    assert load_workbook(task.cases[0].input_path)["Data"]["A5"].value is None


def test_a_hard_coded_value_passes_only_the_first_case(task, skill, tmp_path):
    model = ScriptedModel([step("write_cells", {"sheet": "Data", "cells": {"A5": 60}}), FINISH])
    trajectory = rollout(model, task, skill, tmp_path)
    assert trajectory.score == pytest.approx(1 / 3)
    assert not trajectory.hard and trajectory.label == "failure"
    failed = {m["case"] for m in trajectory.mismatches}
    assert failed == {"2", "3"}
    assert {m["cell"] for m in trajectory.mismatches} == {"A5"}


def test_a_python_solution_is_replayed_in_the_sandbox(task, skill, tmp_path):
    code = (
        "import openpyxl\n"
        f"wb = openpyxl.load_workbook({WORKBOOK!r})\n"
        "ws = wb['Data']\n"
        "ws['A5'] = sum(ws.cell(row=r, column=1).value for r in range(2, 5))\n"
        f"wb.save({WORKBOOK!r})\n"
        "print('total', ws['A5'].value)\n"
    )
    model = ScriptedModel([step("run_python", {"code": code}, "Totals"), FINISH])
    trajectory = rollout(model, task, skill, tmp_path)
    assert trajectory.steps[0].ok and "total 60" in trajectory.steps[0].observation
    assert trajectory.score == 1.0 and trajectory.label == "success"
    assert trajectory.replay_notes == {}
    assert load_workbook(trajectory.outputs["2"])["Data"]["A5"].value == 6.5


def test_references_opened_and_sections_cited_are_recorded(task, skill, tmp_path):
    model = ScriptedModel(
        [
            step("open_reference", {"name": "references/formulas.md"}, "Totals"),
            step("read_range", {"sheet": "Data", "range": "A1:A4"}, "Made-up section"),
            step("inspect_workbook", {}, "Workflow"),
            step("inspect_workbook", {}, "Totals"),
            FINISH,
        ]
    )
    trajectory = rollout(model, task, skill, tmp_path)
    assert trajectory.references_opened == ["references/formulas.md"]
    assert "SUM adds a range." in trajectory.steps[0].observation
    assert trajectory.sections_cited == ["Totals", "Workflow"]
    assert trajectory.unknown_sections == ["Made-up section"]
    assert "Data!A1:A4" in trajectory.steps[1].observation
    assert "A2=10" in trajectory.steps[1].observation
    # The prompt: SKILL.md verbatim, reference files listed but not loaded, section choices.
    system = model.calls[0][0][0]["content"]
    assert SKILL_MD.strip() in system
    assert "references/formulas.md" in system and "SUM adds a range." not in system
    sections = model.calls[0][1].schema["anyOf"][0]["properties"]["section"]["enum"]
    assert sections == ["", "Tiny sheets", "Workflow", "Totals"]
    user = model.calls[0][0][1]["content"]
    assert task.instruction in user and "Data!A5" in user and WORKBOOK in user


def test_no_skill_mode_has_no_skill_in_the_prompt(task, tmp_path):
    model = ScriptedModel([step("inspect_workbook", {}), FINISH])
    trajectory = rollout(model, task, None, tmp_path)
    assert trajectory.stopped == "finish" and trajectory.sections_cited == []
    system = model.calls[0][0][0]["content"]
    assert "SKILL.md" not in system and "open_reference" not in system
    schema = model.calls[0][1].schema
    assert {b["properties"]["tool"]["enum"][0] for b in schema["anyOf"]} == {
        "inspect_workbook",
        "read_range",
        "write_cells",
        "run_python",
        "finish",
    }
    assert schema["anyOf"][0]["properties"]["section"]["enum"] == [""]


def test_failing_tools_fail_their_step_and_the_rollout_goes_on(task, skill, tmp_path):
    model = ScriptedModel(
        [
            step("read_range", {"sheet": "Nope", "range": "A1"}),
            step("read_range", {"sheet": "Data", "range": "not a range"}),
            step("write_cells", {"sheet": "Data", "cells": {"A1:B2": 1}}),
            step("run_python", {"code": "raise ValueError('bad idea')"}),
            step("run_python", {"code": "while True:\n    pass"}),
            step("open_reference", {"name": "missing.md"}),
            step("write_cells", {"sheet": "Data", "cells": {"A5": 60}}),
            FINISH,
        ]
    )
    limits = SandboxLimits(seconds=1)
    trajectory = run_agent(model, task, skill, workdir=tmp_path / "w", sandbox_limits=limits)
    errors = [s.error for s in trajectory.steps]
    assert "no sheet 'Nope'" in errors[0] and "'Data'" in errors[0]
    assert "not a range" in errors[1]
    assert "not a single cell" in errors[2]
    assert errors[3] == "ValueError: bad idea"
    assert "ValueError: bad idea" in trajectory.steps[3].observation  # the traceback is shown
    # A busy loop meets the CPU limit or the wall clock first, depending on the machine's load.
    assert errors[4].startswith("timed out after 1s")
    assert "args/name: 'missing.md' is not one of" in errors[5]
    assert [s.ok for s in trajectory.steps] == [False] * 6 + [True, True]
    # Failed steps that changed nothing are not replayed (they would fail again and be noted).
    assert trajectory.replay_notes == {} and trajectory.score == pytest.approx(1 / 3)


def test_a_replayed_step_that_fails_on_another_case_is_noted(task, skill, tmp_path):
    code = (
        "import openpyxl\n"
        "wb = openpyxl.load_workbook('workbook.xlsx')\n"
        "ws = wb['Data']\n"
        "if ws['A2'].value != 10:\n"
        "    raise SystemExit('unexpected data')\n"
        "ws['A5'] = '=SUM(A2:A4)'\n"
        "wb.save('workbook.xlsx')\n"
    )
    model = ScriptedModel([step("run_python", {"code": code}), FINISH])
    trajectory = rollout(model, task, skill, tmp_path)
    assert trajectory.score == pytest.approx(1 / 3)
    assert set(trajectory.replay_notes) == {"2", "3"}
    assert "unexpected data" in trajectory.replay_notes["2"][0]


def test_a_model_error_is_recorded_and_the_work_so_far_is_judged(task, skill, tmp_path):
    def broken(messages, options):
        raise ModelError("the model fell over")

    model = ScriptedModel([step("write_cells", {"sheet": "Data", "cells": {"A5": 60}}), broken])
    trajectory = rollout(model, task, skill, tmp_path)
    assert trajectory.error == "model failed: the model fell over"
    assert trajectory.stopped == "error"
    assert trajectory.score == pytest.approx(1 / 3)  # what was written before is judged


def test_budgets_stop_the_agent(task, skill, tmp_path):
    model = ScriptedModel([step("inspect_workbook", {})])
    trajectory = rollout(model, task, skill, tmp_path, budget=AgentBudget(turns=2))
    assert trajectory.turns == 2 and trajectory.stopped == "turns"
    assert trajectory.label == "failure" and trajectory.score == 0.0
    trajectory = rollout(model, task, skill, tmp_path, budget=AgentBudget(turns=50, tokens=1))
    assert trajectory.turns == 1 and trajectory.stopped == "tokens"
    total = trajectory.tokens["prompt"] + trajectory.tokens["completion"]
    assert total > 0 and trajectory.tokens["prompt_eval"] > 0
    assert set(trajectory.timings) >= {"total", "model", "tools", "check"}


def test_the_sandbox_sees_only_the_workbook(task, skill, tmp_path):
    code = "import os\nprint(sorted(os.listdir('.')))"
    model = ScriptedModel([step("run_python", {"code": code}), FINISH])
    trajectory = rollout(model, task, skill, tmp_path)
    assert trajectory.steps[0].observation == "stdout:\n['workbook.xlsx']"


def test_a_planted_symlink_is_not_followed(task, skill, tmp_path):
    secret = tmp_path / "secret.xlsx"
    secret.write_bytes(b"not yours")
    code = f"import os\nos.remove('workbook.xlsx')\nos.symlink({str(secret)!r}, 'workbook.xlsx')"
    model = ScriptedModel(
        [step("run_python", {"code": code}), step("inspect_workbook", {}), FINISH]
    )
    trajectory = rollout(model, task, skill, tmp_path)
    assert "not a regular file" in trajectory.steps[1].error
    assert trajectory.label == "failure"
    assert "1" not in trajectory.outputs  # no output was taken from the link
    assert os.path.exists(secret)


def test_trajectory_round_trips_through_json(task, skill, tmp_path):
    from t2s.trajectory import Trajectory

    model = ScriptedModel([step("write_cells", {"sheet": "Data", "cells": {"A5": 60}}), FINISH])
    trajectory = rollout(model, task, skill, tmp_path)
    path = tmp_path / "t.json"
    trajectory.save(path)
    loaded = Trajectory.load(path)
    assert loaded == trajectory
    assert loaded.steps[0].args == {"sheet": "Data", "cells": {"A5": 60}}


def test_a_broken_trajectory_file_is_a_clear_error(tmp_path):
    from t2s.errors import RunError
    from t2s.trajectory import Trajectory

    path = tmp_path / "t.json"
    path.write_text('{"run_id": "x"')
    with pytest.raises(RunError, match="not a valid record"):
        Trajectory.load(path)
    path.write_text('{"run_id": "x"}')
    with pytest.raises(RunError, match="not a valid record"):
        Trajectory.load(path)
