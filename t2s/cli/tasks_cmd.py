"""`t2s tasks list SUITE` and `t2s tasks show SUITE ID`: browse a task suite."""

from __future__ import annotations

import datetime as dt
import textwrap

import click

from t2s.cli import main
from t2s.cli.options import ratio_option, split_option
from t2s.tasks import get_task, load_suite, preview_workbook, split_tasks


@main.group("tasks")
def tasks_group():
    """Browse task suites: `bundled` or a directory in the SpreadsheetBench layout."""


@tasks_group.command("list")
@click.argument("suite")
@split_option
@ratio_option
def list_tasks(suite, split, ratio):
    """List the tasks of SUITE: id, kind, type, test cases, instruction."""
    loaded = load_suite(suite)
    tasks = split_tasks(loaded.tasks, split, ratio)
    width = max((len(task.id) for task in tasks), default=2)
    kind_width = max((len(task.kind) for task in tasks), default=4)
    click.echo(f"{'id':<{width}}  {'kind':<{kind_width}}  type   cases  instruction")
    counts: dict[str, int] = {}
    for task in tasks:
        counts[task.kind] = counts.get(task.kind, 0) + 1
        level = "sheet" if task.is_sheet_level else "cell"
        instruction = textwrap.shorten(task.instruction, 70, placeholder="...")
        click.echo(
            f"{task.id:<{width}}  {task.kind:<{kind_width}}  {level:<5}  "
            f"{len(task.cases):>5}  {instruction}"
        )
    by_kind = ", ".join(f"{kind} {count}" for kind, count in sorted(counts.items()))
    click.echo(f"\n{len(tasks)} tasks ({split} split of {len(loaded.tasks)}): {by_kind}")


@tasks_group.command("show")
@click.argument("suite")
@click.argument("task_id")
def show_task(suite, task_id):
    """Show one task: instruction, answer position, test cases and the input's first rows."""
    loaded = load_suite(suite)
    task = get_task(loaded, task_id)
    click.echo(f"task:            {task.id}  ({task.kind}, {task.instruction_type})")
    click.echo(f"answer position: {task.answer_position}")
    if task.answer_sheet:
        click.echo(f"answer sheet:    {task.answer_sheet}")
    if task.data_position:
        click.echo(f"data position:   {task.data_position}")
    click.echo("\n" + textwrap.fill(task.instruction, 100) + "\n")
    for case in task.cases:
        click.echo(f"case {case.name}: input  {case.input_path}")
        click.echo(f"        answer {case.answer_path}")
    click.echo(f"\ninput of case {task.cases[0].name}:")
    for sheet in preview_workbook(task.cases[0].input_path):
        click.echo(f"  sheet {sheet.title!r} ({sheet.max_row} rows x {sheet.max_column} columns)")
        for row in sheet.rows:
            click.echo("    " + " | ".join(_cell_text(value) for value in row))


def _cell_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime) and value.time() == dt.time(0):
        return value.date().isoformat()
    return textwrap.shorten(str(value), 24, placeholder="...")
