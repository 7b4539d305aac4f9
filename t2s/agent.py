"""The spreadsheet agent: one rollout of one task with one skill, recorded as a Trajectory.

The agent works on the task's first test case, in a folder holding a copy of that case's
input as `workbook.xlsx`. Its workbook-changing actions (write_cells and run_python, in order)
are then replayed on every other test case's input, and all outputs are judged by the checker:
a procedure that computes the answer passes every case, hard-coded values pass only the first.
This mirrors SpreadsheetBench's multi-case design.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openpyxl import load_workbook
from openpyxl.utils.cell import coordinate_from_string, range_boundaries
from openpyxl.utils.exceptions import CellCoordinatesException

from t2s.checker import check_task
from t2s.errors import T2SError
from t2s.models.base import Model
from t2s.sandbox import SandboxLimits, run_python
from t2s.skill import Skill
from t2s.tasks import Task, TestCase
from t2s.toolloop import LoopBudget, LoopResult, Tool, ToolFailure, describe_tools, run_tool_loop
from t2s.trajectory import FAILURE, SUCCESS, Trajectory

WORKBOOK = "workbook.xlsx"
SKILL_FILE = "SKILL.md"
READ_CELLS = 200  # most cells one read_range shows
WRITE_CELLS = 500  # most cells one write_cells call may set
VALUE_CHARS = 60  # of one cell value in an observation
CODE_CHARS = 20_000
MISMATCHES_KEPT = 50
CHANGING_TOOLS = ("write_cells", "run_python")

ROLE = """You are a spreadsheet agent. You edit the workbook `workbook.xlsx` in your working \
folder so that it answers the user's instruction. You act through tools, one JSON step per turn:
{"tool": "<tool name>", "thought": "<short reasoning>", "section": {section}, "args": {...}}

Rules:
- Put the answer exactly at the answer position; leave everything else as it is.
- Your changes are replayed on other workbooks with the same layout but different data: compute \
answers with formulas (e.g. "=SUM(B2:B9)") or with Python that reads the data, never by typing \
in values you worked out yourself.
- In run_python, open the workbook with openpyxl.load_workbook("workbook.xlsx") and save it \
with wb.save("workbook.xlsx"); print what you need to see.
- Call finish as soon as the answer is in place.

Tools:
{tools}"""


@dataclass
class AgentBudget:
    turns: int = 20  # the paper allowed 100
    tokens: int = 60000  # prompt + completion tokens over the rollout
    max_tokens: int = 512  # most tokens of one reply

    def to_dict(self) -> dict:
        return {"turns": self.turns, "tokens": self.tokens, "max_tokens": self.max_tokens}

    @classmethod
    def from_dict(cls, data: dict) -> AgentBudget:
        return cls(**{key: data[key] for key in cls().to_dict() if key in data})


@dataclass
class _Action:
    """A workbook-changing call made on the first case, to replay on the others."""

    turn: int
    tool: str
    args: dict


class Workspace:
    """One test case's working folder and the tools that act on its `workbook.xlsx`."""

    def __init__(self, folder: Path, input_path: Path, limits: SandboxLimits):
        self.folder = folder
        self.limits = limits
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        shutil.copyfile(input_path, folder / WORKBOOK)

    @property
    def workbook_path(self) -> Path:
        path = self.folder / WORKBOOK
        # The sandboxed code owns this folder: never follow a link it may have planted.
        if path.is_symlink() or not path.is_file():
            raise ToolFailure(f"{WORKBOOK} is missing or not a regular file; recreate it")
        return path

    def digest(self) -> str:
        try:
            return hashlib.sha1(self.workbook_path.read_bytes()).hexdigest()
        except ToolFailure:
            return ""

    def _open(self):
        """The workbook with formulas as written (openpyxl stores no values for new ones)."""
        try:
            return load_workbook(self.workbook_path)
        except ToolFailure:
            raise
        except Exception as error:  # noqa: BLE001 - openpyxl raises many kinds on a bad file
            raise ToolFailure(f"{WORKBOOK} cannot be opened: {_one_line(error)}") from None

    # -- tools ------------------------------------------------------------------------------

    def inspect(self, args: dict) -> str:
        workbook = self._open()
        lines = [f"{WORKBOOK}: {len(workbook.sheetnames)} sheet(s)"]
        for sheet in workbook.worksheets:
            rows, columns = sheet.max_row, sheet.max_column
            lines.append(
                f"Sheet {sheet.title!r}: used range {sheet.dimensions} ({rows} rows x {columns} "
                "columns)"
            )
            for row in sheet.iter_rows(min_row=1, max_row=min(rows, 6), max_col=min(columns, 12)):
                shown = [
                    f"{cell.coordinate}={_show(cell.value)}"
                    for cell in row
                    if cell.value is not None
                ]
                if shown:
                    lines.append("  " + " | ".join(shown))
            if rows > 6:
                lines.append(f"  ... {rows - 6} more row(s)")
        return "\n".join(lines)

    def read_range(self, args: dict) -> str:
        workbook = self._open()
        sheet_name, reference = _split_reference(args.get("sheet", ""), args["range"])
        sheet = _sheet(workbook, sheet_name)
        try:
            min_col, min_row, max_col, max_row = range_boundaries(reference.replace("$", ""))
        except (ValueError, TypeError):
            raise ToolFailure(f"{reference!r} is not a range like A1:C10") from None
        # Whole columns or rows ("A:C", "2:5") end where the used range ends.
        max_row, max_col = max_row or sheet.max_row, max_col or sheet.max_column
        lines, shown = [], 0
        for row in sheet.iter_rows(
            min_row=min_row, max_row=max_row, min_col=min_col, max_col=max_col
        ):
            cells = [f"{cell.coordinate}={_show(cell.value)}" for cell in row]
            if shown + len(cells) > READ_CELLS:
                lines.append(f"... cut at {READ_CELLS} cells; read a smaller range")
                break
            shown += len(cells)
            lines.append(" | ".join(cells))
        return f"{sheet.title}!{reference}:\n" + "\n".join(lines)

    def write_cells(self, args: dict) -> str:
        cells = args["cells"]
        if not cells:
            raise ToolFailure('no cells given: cells is an object like {"B2": "=SUM(A1:A9)"}')
        if len(cells) > WRITE_CELLS:
            raise ToolFailure(f"{len(cells)} cells in one call; write at most {WRITE_CELLS}")
        workbook = self._open()
        written = []
        for key, value in cells.items():
            sheet_name, coordinate = _split_reference(args.get("sheet", ""), key)
            sheet = _sheet(workbook, sheet_name)
            try:
                coordinate_from_string(coordinate.replace("$", ""))
            except (ValueError, CellCoordinatesException):
                raise ToolFailure(f"{key!r} is not a single cell like B7") from None
            sheet[coordinate.replace("$", "")] = value
            written.append(f"{sheet.title}!{coordinate}")
        self._save(workbook)
        return f"wrote {len(written)} cell(s): {', '.join(written[:20])}" + (
            " ..." if len(written) > 20 else ""
        )

    def run(self, args: dict) -> str:
        code = args["code"]
        if len(code) > CODE_CHARS:
            raise ToolFailure(f"the code is {len(code)} characters; keep it under {CODE_CHARS}")
        result = run_python(code, self.folder, self.limits)
        parts = []
        if result.stdout.strip():
            parts.append("stdout:\n" + result.stdout.strip())
        if result.stderr.strip():
            parts.append("stderr:\n" + result.stderr.strip()[-1500:])
        if not result.ok:
            raise ToolFailure(result.reason, "\n".join(parts))
        return "\n".join(parts) or "(ran without output)"

    def _save(self, workbook) -> None:
        temporary = self.folder / f".{WORKBOOK}.tmp"
        try:
            workbook.save(temporary)
            os.replace(temporary, self.folder / WORKBOOK)
        except Exception as error:  # noqa: BLE001 - e.g. a value openpyxl refuses
            temporary.unlink(missing_ok=True)
            raise ToolFailure(f"could not save {WORKBOOK}: {_one_line(error)}") from None

    def replay(self, action: _Action) -> None:
        if action.tool == "write_cells":
            self.write_cells(action.args)
        else:
            self.run(action.args)


def run_agent(
    model: Model,
    task: Task,
    skill: Skill | None,
    *,
    workdir: Path | str,
    output_dir: Path | str | None = None,
    case: TestCase | None = None,
    skill_ref: str = "",
    skill_commit: str = "",
    budget: AgentBudget | None = None,
    sandbox_limits: SandboxLimits | None = None,
    run_id: str = "",
    suite: str = "",
) -> Trajectory:
    """Solve `task` on `case` (its first test case by default), replay, judge, record.

    `skill=None` runs the same agent with no skill in its prompt. Outputs land in
    `output_dir/<case>.xlsx` (default `workdir/outputs`). Nothing the model does raises.
    """
    started = time.perf_counter()
    budget = budget or AgentBudget()
    limits = sandbox_limits or SandboxLimits()
    workdir = Path(workdir)
    output_dir = Path(output_dir) if output_dir is not None else workdir / "outputs"
    case = case or task.cases[0]
    titles = list(dict.fromkeys(section.title for section in skill.sections())) if skill else []
    references = skill.references() if skill else []

    workspace = Workspace(workdir / _safe(case.name), case.input_path, limits)
    changes: list[bool] = []
    opened: list[str] = []
    tools = _tools(workspace, skill, references, changes, opened)
    loop = run_tool_loop(
        model,
        _messages(task, skill, references, tools),
        tools,
        LoopBudget(turns=budget.turns, tokens=budget.tokens, reply_tokens=budget.max_tokens),
        sections=titles,
    )
    trajectory = Trajectory(
        run_id=run_id,
        task_id=task.id,
        suite=suite or task.suite,
        case=case.name,
        skill_ref=skill_ref,
        skill_commit=skill_commit,
        model=getattr(model, "name", ""),
        instruction=task.instruction,
        messages=loop.messages,
        steps=loop.steps,
        references_opened=opened,
        turns=loop.turns,
        stopped=loop.stopped,
        error=f"model failed: {loop.error}" if loop.error else "",
    )
    _record_sections(trajectory, loop, titles)
    trajectory.tokens = {
        "prompt": loop.usage.prompt_tokens,
        "completion": loop.usage.completion_tokens,
        "prompt_eval": loop.usage.prompt_eval_tokens,
    }

    replay_started = time.perf_counter()
    actions = _replayable(loop, changes)
    outputs = {case.name: _keep_output(workspace, output_dir, case)}
    for other in task.cases:
        if other.name == case.name:
            continue
        replayed = Workspace(workdir / _safe(other.name), other.input_path, limits)
        for action in actions:
            try:
                replayed.replay(action)
            except ToolFailure as failure:
                note = f"turn {action.turn} {action.tool}: {failure}"
                trajectory.replay_notes.setdefault(other.name, []).append(note)
        outputs[other.name] = _keep_output(replayed, output_dir, other)
    replay_seconds = time.perf_counter() - replay_started
    trajectory.outputs = {name: str(path) for name, path in outputs.items() if path}
    trajectory.output_path = trajectory.outputs.get(case.name, "")

    check_started = time.perf_counter()
    _judge(trajectory, task, outputs)
    check_seconds = time.perf_counter() - check_started
    trajectory.timings = {
        "total": time.perf_counter() - started,
        "model": loop.model_seconds,
        "tools": loop.tool_seconds,
        "replay": replay_seconds,
        "check": check_seconds,
    }
    return trajectory


def _tools(
    workspace: Workspace,
    skill: Skill | None,
    references: list[str],
    changes: list[bool],
    opened: list[str],
) -> list[Tool]:
    def changing(handler):
        """Note, in call order, whether the call changed the workbook (for the replay)."""

        def run(args: dict) -> str:
            before = workspace.digest()
            try:
                observation = handler(args)
            finally:
                changes.append(workspace.digest() != before)
            return observation

        return run

    def open_reference(args: dict) -> str:
        name = args["name"]  # one of `references`: the schema's enum
        if name not in opened:
            opened.append(name)
        return skill.files[name]

    sheet = {"type": "string", "maxLength": 40}
    tools = [
        Tool(
            "inspect_workbook",
            "List the sheets with their used ranges and the first rows of values.",
            {"type": "object", "properties": {}, "additionalProperties": False},
            workspace.inspect,
        ),
        Tool(
            "read_range",
            f"Show the cells of a range (at most {READ_CELLS}); formulas are shown as written.",
            {
                "type": "object",
                "properties": {"sheet": sheet, "range": {"type": "string", "maxLength": 40}},
                "required": ["sheet", "range"],
                "additionalProperties": False,
            },
            workspace.read_range,
        ),
        Tool(
            "write_cells",
            'Set cells of one sheet: a value, or a formula starting with "=".',
            {
                "type": "object",
                "properties": {
                    "sheet": sheet,
                    "cells": {
                        "type": "object",
                        "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
                    },
                },
                "required": ["sheet", "cells"],
                "additionalProperties": False,
            },
            changing(workspace.write_cells),
            example_args={"sheet": "Sheet1", "cells": {"C12": "=SUM(C2:C11)", "B12": "Total"}},
        ),
        Tool(
            "run_python",
            "Run Python 3 with openpyxl in the working folder (limited time and memory); "
            "shows what it prints.",
            {
                "type": "object",
                # No maxLength: llama.cpp grammars for long bounded strings are huge and slow;
                # the reply's token limit bounds the code instead.
                "properties": {"code": {"type": "string"}},
                "required": ["code"],
                "additionalProperties": False,
            },
            changing(workspace.run),
            example_args={
                "code": "import openpyxl\nwb = openpyxl.load_workbook('workbook.xlsx')\n..."
            },
        ),
    ]
    if references:
        tools.append(
            Tool(
                "open_reference",
                "Read one of the skill's reference files.",
                {
                    "type": "object",
                    "properties": {"name": {"type": "string", "enum": references}},
                    "required": ["name"],
                    "additionalProperties": False,
                },
                open_reference,
            )
        )
    tools.append(
        Tool(
            "finish",
            "Stop: the answer is in place.",
            {
                "type": "object",
                "properties": {"summary": {"type": "string", "maxLength": 100}},
                "required": ["summary"],
                "additionalProperties": False,
            },
            lambda args: "finished",
            finishes=True,
        )
    )
    return tools


def _messages(
    task: Task, skill: Skill | None, references: list[str], tools: list[Tool]
) -> list[dict]:
    section = '"<the SKILL.md section that guided this step, or empty>"' if skill else '""'
    system = ROLE.replace("{section}", section).replace("{tools}", describe_tools(tools))
    if skill is not None:
        system += (
            f"\n\nYour skill ({SKILL_FILE}) follows.\n\n{skill.files.get(SKILL_FILE, '').strip()}"
        )
        if references:
            system += (
                "\n\nReference files of the skill (open one with open_reference when it would "
                f"help): {', '.join(references)}"
            )
    sheet = f" (sheet {task.answer_sheet!r})" if task.answer_sheet else ""
    user = (
        f"Instruction: {task.instruction.strip()}\n"
        f"Kind of change: {task.instruction_type}\n"
        f"Answer position: {task.answer_position}{sheet}\n"
        f"The workbook is {WORKBOOK} in your working folder."
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _replayable(loop: LoopResult, changes: list[bool]) -> list[_Action]:
    """The calls that changed the first case's workbook, or could have, in order.

    Every valid call of a changing tool ran its handler once, so `changes` lines up with them.
    A successful run_python that changed nothing is kept (it may write on other data); a failed
    one is kept only if it saved part of its work.
    """
    calls = [step for step in loop.steps if step.tool in CHANGING_TOOLS]
    return [
        _Action(step.turn, step.tool, step.args)
        for step, changed in zip(calls, changes)
        if changed or (step.ok and step.tool == "run_python")
    ]


def _record_sections(trajectory: Trajectory, loop: LoopResult, titles: list[str]) -> None:
    for step in loop.steps:
        name = step.section.strip().lstrip("#").strip()
        if not name:
            continue
        target = trajectory.sections_cited if name in titles else trajectory.unknown_sections
        if name not in target:
            target.append(name)


def _keep_output(workspace: Workspace, output_dir: Path, case: TestCase) -> Path | None:
    try:
        source = workspace.workbook_path
    except ToolFailure:
        return None
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / f"{_safe(case.name)}.xlsx"
    temporary = output_dir / f".{target.name}.tmp"
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)
    return target


def _judge(trajectory: Trajectory, task: Task, outputs: dict[str, Path | None]) -> None:
    present = {name: path for name, path in outputs.items() if path is not None}
    try:
        result = check_task(task, present)
    except T2SError as error:
        trajectory.error = trajectory.error or f"could not check the outputs: {error}"
        trajectory.score, trajectory.hard, trajectory.label = 0.0, False, FAILURE
        return
    trajectory.score, trajectory.hard, trajectory.judge = result.soft, result.hard, result.judge
    trajectory.label = SUCCESS if result.hard else FAILURE
    for case_result in result.cases:
        if case_result.error and not case_result.mismatches:
            trajectory.mismatches.append({"case": case_result.case, "error": case_result.error})
        for mismatch in case_result.mismatches:
            trajectory.mismatches.append({"case": case_result.case, **mismatch.to_dict()})
    del trajectory.mismatches[MISMATCHES_KEPT:]


def _split_reference(sheet: str, reference: str) -> tuple[str, str]:
    """`Sheet1!A1` or `'My sheet'!A1:B2` in the reference wins over the sheet argument."""
    reference = reference.strip()
    if "!" in reference:
        sheet, reference = reference.rsplit("!", 1)
        sheet = sheet.strip()
        if len(sheet) >= 2 and sheet[0] == sheet[-1] == "'":
            sheet = sheet[1:-1].replace("''", "'")
    return sheet.strip(), reference.strip()


def _sheet(workbook, name: str):
    if not name:
        return workbook.active
    for sheet in workbook.worksheets:
        if sheet.title == name or sheet.title.lower() == name.lower():
            return sheet
    raise ToolFailure(
        f"no sheet {name!r}; the sheets are {', '.join(map(repr, workbook.sheetnames))}"
    )


def _show(value: Any) -> str:
    text = (
        json.dumps(value, ensure_ascii=False, default=str)
        if not isinstance(value, str)
        else repr(value)
    )
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 3] + "..."


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def _safe(name: str) -> str:
    return "".join(char if char.isalnum() or char in "-_." else "_" for char in name) or "case"
