"""The error analyst: an agent loop per failed trajectory that must fix the output first.

The analyst gets the agent's cleaned log and a workbench of four workbooks: the task's
`input`, the agent's `output`, the `gold` answer, and `fixed`, its own candidate, which starts
as a copy of the agent's output (or of the input when the agent saved none). It may read any
of them, run the checker on `fixed`, and run Python in the sandbox, where only `input.xlsx`,
`output.xlsx` and `fixed.xlsx` exist: the gold workbook never enters the sandbox. It ends by
calling `submit_lessons`, which is refused until `fixed` passes the checker. A loop that ends
without a submitted, checked fix drops the trajectory (the quality gate).
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path
from typing import Any

import openpyxl
from openpyxl.utils import get_column_letter

from t2s.analysts.digest import skill_text, trajectory_text
from t2s.analysts.records import (
    BAD_INPUT,
    DROPPED,
    MODEL_FAILED,
    NOT_FIXED,
    NOT_SUBMITTED,
    AnalysisJob,
    AnalysisRecord,
    Reason,
)
from t2s.analysts.success import EDIT_HELP, patch_reply_schema
from t2s.analysts.vetting import vet_patch
from t2s.checker import CaseResult, check_case, parse_answer_position
from t2s.errors import TaskError
from t2s.models.base import Model
from t2s.patch import MAX_LESSONS
from t2s.sandbox import SandboxLimits, run_python
from t2s.skill import Skill
from t2s.tasks import Task, TestCase
from t2s.toolloop import LoopBudget, Tool, ToolFailure, describe_tools, run_tool_loop
from t2s.trajectory import Trajectory

WORKBOOKS = ("input", "output", "fixed", "gold")
SANDBOX_DIR = "sandbox"
OUTPUTS_DIR = "outputs"  # of the run directory, where the rollout keeps the agent's workbooks
FIXED_FILE = "fixed.xlsx"
CELLS_SHOWN = 120  # of one `read`
ROWS_PREVIEWED = 3  # per sheet, when `read` is given no range
MISMATCHES_SHOWN = 12
OBSERVATION_CHARS = 1500
LOG_CHARS = 3500
TOKENS_PER_TURN = 8000  # the loop's token budget is the turn budget times this
SANDBOX_LIMITS = SandboxLimits(seconds=30, memory_mb=1024, file_mb=50)

SYSTEM = f"""\
You are an error analyst. A spreadsheet agent guided by a skill FAILED a task. Work in order:
1. Find where its output is wrong: the checker report, then `read` the output and the gold.
2. Trace the error to what the agent did, using its log: which behaviour caused it.
3. Make a minimal fix: `run_python` runs Python with openpyxl in a folder holding
   input.xlsx (the task's input), output.xlsx (the agent's output) and fixed.xlsx (your
   candidate, a copy of the agent's output). Load fixed.xlsx, correct it, save it as
   fixed.xlsx. `check` runs the checker on fixed.xlsx.
4. Only when fixed.xlsx passes the checker, call `submit_lessons` with: diagnosis (what went
   wrong and how you fixed it), at most {MAX_LESSONS} causal lessons (what an agent should do
   differently on any similar task; never quote values from this task's answer), reasoning,
   and edits to the skill that teach the lessons. It is refused while the check fails.
Tools:
{{tools}}
Skill edits:
{EDIT_HELP}"""


class Workbench:
    """The four workbooks of one failed case, and the analyst's tools over them."""

    def __init__(self, workdir: Path, task: Task, case: TestCase, agent_output: Path | None):
        self.task = task
        self.case = case
        self.agent_output = agent_output
        self.sandbox = workdir / SANDBOX_DIR
        self.fixed = self.sandbox / FIXED_FILE
        self.ever_passed = False
        if workdir.exists():  # a previous, unfinished attempt: start again from the originals
            shutil.rmtree(workdir)
        self.sandbox.mkdir(parents=True)
        shutil.copyfile(case.input_path, self.sandbox / "input.xlsx")
        start = agent_output if agent_output is not None else case.input_path
        shutil.copyfile(start, self.sandbox / "output.xlsx")
        shutil.copyfile(start, self.fixed)

    def paths(self) -> dict[str, Path | None]:
        return {
            "input": self.case.input_path,
            "output": self.agent_output,
            "fixed": self.fixed,
            "gold": self.case.answer_path,
        }

    # -- tools ---------------------------------------------------------------------------

    def tools(self) -> list[Tool]:
        return [
            Tool(
                "read",
                'Show cells of a workbook; range like "Sheet1!A1:D10" or "B2:B9"; an empty '
                "range lists every sheet with its size and first rows.",
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["workbook", "range"],
                    "properties": {
                        "workbook": {"type": "string", "enum": list(WORKBOOKS)},
                        "range": {"type": "string", "maxLength": 60},
                    },
                },
                self.read,
            ),
            Tool(
                "check",
                "Run the checker on fixed.xlsx: PASS, or the answer cells that differ from gold.",
                {"type": "object", "additionalProperties": False, "properties": {}},
                lambda args: self.check_text(),
            ),
            Tool(
                "run_python",
                "Run Python (openpyxl available) in the folder with input.xlsx, output.xlsx and "
                "fixed.xlsx; save your corrections to fixed.xlsx. Shows output, then the check.",
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["code"],
                    # Unbounded, as in the agent: the reply's token budget bounds the code.
                    "properties": {"code": {"type": "string"}},
                },
                self.run,
            ),
            Tool(
                "submit_lessons",
                "Finish: only after fixed.xlsx passes the check.",
                submit_schema(),
                self.submit,
                finishes=True,
            ),
        ]

    def read(self, args: dict) -> str:
        name = args["workbook"]
        path = self.paths()[name]
        if path is None:
            raise ToolFailure("the agent saved no output workbook; read input or fixed instead")
        try:
            workbook = openpyxl.load_workbook(path, data_only=(name == "gold"))
        except Exception as error:  # noqa: BLE001 - a broken workbook is an observation
            raise ToolFailure(f"{name} cannot be opened: {error}") from None
        text = args["range"].strip()
        if not text:
            return _overview(workbook)
        try:
            area = parse_answer_position(text, workbook.sheetnames[0])[0]
        except TaskError as error:
            raise ToolFailure(str(error)) from None
        sheet = _sheet(workbook, area.sheet)
        if sheet is None:
            raise ToolFailure(f"{name} has no sheet {area.sheet!r}; sheets: {workbook.sheetnames}")
        return _cells(sheet, area)

    def check(self) -> CaseResult:
        result = check_case(self.task, self.case, self.fixed)
        self.ever_passed = self.ever_passed or result.passed
        return result

    def check_text(self) -> str:
        return describe_check(self.check())

    def run(self, args: dict) -> str:
        result = run_python(args["code"], self.sandbox, SANDBOX_LIMITS)
        lines = [f"exit: {'ok' if result.ok else 'failed: ' + result.reason}"]
        if result.stdout.strip():
            lines.append(f"stdout: {result.stdout.strip()[-600:]}")
        if result.stderr.strip() and not result.ok:
            lines.append(f"stderr: {result.stderr.strip()[-400:]}")
        if not self.fixed.is_file():
            lines.append("fixed.xlsx is gone: save your candidate as fixed.xlsx")
        else:
            lines.append(f"check of fixed.xlsx: {self.check_text()}")
        return "\n".join(lines)

    def submit(self, args: dict) -> str:
        if not self.fixed.is_file():
            raise ToolFailure("refused: there is no fixed.xlsx; make a fix with run_python first")
        result = self.check()
        if not result.passed:
            raise ToolFailure(
                f"refused: fixed.xlsx does not pass the checker yet ({describe_check(result)}); "
                "fix it with run_python, then submit"
            )
        return "lessons submitted"


def submit_schema() -> dict:
    return patch_reply_schema("diagnosis")


def describe_check(result: CaseResult) -> str:
    if result.passed:
        return f"PASS: all {result.cells_checked} answer cells match"
    if result.error:
        return f"FAIL: {result.error}"
    shown = "; ".join(m.describe() for m in result.mismatches[:MISMATCHES_SHOWN])
    more = result.mismatch_count - min(len(result.mismatches), MISMATCHES_SHOWN)
    return (
        f"FAIL: {result.mismatch_count} of {result.cells_checked} answer cells differ: {shown}"
        + (f" (+{more} more)" if more > 0 else "")
    )


def error_messages(
    skill: Skill, trajectory: Trajectory, bench: Workbench, tools: list[Tool]
) -> list[dict]:
    task = bench.task
    user = (
        f"{skill_text(skill)}\n\n"
        f"=== the task ===\n{task.instruction.strip()}\nAnswer position: {task.answer_position}"
        f"\nTest case: {bench.case.name}\n\n"
        f"=== the agent's log ===\n{trajectory_text(trajectory, LOG_CHARS)}\n\n"
        f"=== the checker on the agent's output ===\n{bench.check_text()}\n\n"
        "Find the error, fix fixed.xlsx, check it, then submit your lessons."
    )
    system = SYSTEM.replace("{tools}", describe_tools(tools))
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def analyze_failure(model: Model, job: AnalysisJob) -> AnalysisRecord:
    trajectory = Trajectory.load(job.trajectory_path)
    record = AnalysisRecord.start(job, trajectory.label, model.name)
    started = time.monotonic()
    case = failed_case(job.task, trajectory)
    output = agent_output(trajectory, case, Path(job.run_dir))
    try:
        bench = Workbench(Path(job.workdir), job.task, case, output)
    except OSError as error:
        return record.fail(BAD_INPUT, f"cannot prepare the analyst's workbooks: {error}")
    tools = bench.tools()
    result = run_tool_loop(
        model,
        error_messages(Skill(job.skill_files), trajectory, bench, tools),
        tools,
        LoopBudget(
            turns=job.turns, tokens=job.turns * TOKENS_PER_TURN, reply_tokens=job.max_tokens
        ),
        sections=[],  # the analyst follows no skill section; an empty enum keeps replies short
        observation_chars=OBSERVATION_CHARS,
    )
    record.seconds = time.monotonic() - started
    record.turns = result.turns
    record.tokens = {
        "prompt": result.usage.prompt_tokens,
        "completion": result.usage.completion_tokens,
        "prompt_eval": result.usage.prompt_eval_tokens,
    }
    record.steps = [_short_step(step) for step in result.steps]
    record.fixed = bench.ever_passed
    if result.stopped == "error":
        return record.fail(MODEL_FAILED, result.error)
    if not result.finished:
        record.status = DROPPED
        budget = f"within {result.turns} turns (stopped by the {result.stopped} budget)"
        if bench.ever_passed:
            record.reasons.append(
                Reason(NOT_SUBMITTED, f"a fix passed but no lessons were submitted {budget}")
            )
        else:
            record.reasons.append(Reason(NOT_FIXED, f"no fix passed the checker {budget}"))
        return record
    data = dict(result.final_args or {})
    diagnosis = data.pop("diagnosis", "")
    record.diagnosis = diagnosis.strip() if isinstance(diagnosis, str) else ""
    return vet_patch(record, data, job.task, job.skill_files)


def failed_case(task: Task, trajectory: Trajectory) -> TestCase:
    """The case to work on: the first that failed, else the one the agent worked on."""
    by_name = {case.name: case for case in task.cases}
    for mismatch in trajectory.mismatches:
        if mismatch.get("case") in by_name:
            return by_name[mismatch["case"]]
    return by_name.get(trajectory.case, task.cases[0])


def agent_output(trajectory: Trajectory, case: TestCase, run_dir: Path) -> Path | None:
    """The agent's workbook for `case`, if it saved one.

    The path is taken as the rollout wrote it, else from its `outputs/` part on under this run
    directory, which still finds it after the run was moved or from another working directory.
    """
    text = trajectory.outputs.get(case.name) or (
        trajectory.output_path if case.name == trajectory.case or not trajectory.case else ""
    )
    if not text:
        return None
    path = Path(text)
    candidates = [path, run_dir / path]
    if OUTPUTS_DIR in path.parts:
        start = len(path.parts) - 1 - path.parts[::-1].index(OUTPUTS_DIR)
        candidates.append(run_dir.joinpath(*path.parts[start:]))
    return next((candidate for candidate in candidates if candidate.is_file()), None)


def _overview(workbook) -> str:
    lines = []
    for sheet in workbook.worksheets:
        lines.append(
            f"sheet {sheet.title!r}: {sheet.max_row} rows x {sheet.max_column} columns "
            f"({sheet.dimensions})"
        )
        for row in sheet.iter_rows(min_row=1, max_row=min(sheet.max_row, ROWS_PREVIEWED)):
            shown = [
                f"{cell.coordinate}={_show(cell.value)}" for cell in row if cell.value is not None
            ]
            if shown:
                lines.append("  " + " ".join(shown))
    return "\n".join(lines)


def _cells(sheet, area) -> str:
    max_col = area.max_col or sheet.max_column
    max_row = area.max_row or sheet.max_row
    lines, count = [], 0
    for row in range(area.min_row, max_row + 1):
        shown = []
        for col in range(area.min_col, max_col + 1):
            value = sheet.cell(row, col).value
            count += 1
            if value is not None:
                shown.append(f"{get_column_letter(col)}{row}={_show(value)}")
            if count >= CELLS_SHOWN:
                break
        if shown:
            lines.append(" ".join(shown))
        if count >= CELLS_SHOWN:
            lines.append(f"[stopped after {CELLS_SHOWN} cells; read a smaller range]")
            break
    return "\n".join(lines) if lines else "(all empty)"


def _sheet(workbook, name: str | None):
    if name is None:
        return workbook.worksheets[0]
    for title in workbook.sheetnames:
        if title.casefold() == name.casefold():
            return workbook[title]
    return None


def _show(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    return repr(value) if isinstance(value, str) else str(value)


def _short_step(step) -> dict:
    args = {
        key: (value if not isinstance(value, str) or len(value) <= 600 else value[:600] + "...")
        for key, value in step.args.items()
    }
    return {
        "turn": step.turn,
        "tool": step.tool,
        "thought": step.thought[:300],
        "args": args,
        "ok": step.ok,
        "observation": step.observation[:400],
        "error": step.error,
    }
