"""`t2s rollout`: the agent with a skill on every task of a suite, one trajectory record each."""

from __future__ import annotations

from pathlib import Path

import click

from t2s.agent import AgentBudget
from t2s.cli import main
from t2s.cli.options import (
    model_option,
    parallel_option,
    ratio_option,
    split_option,
    workers_option,
)
from t2s.errors import ConfigError, TaskError
from t2s.models import resolve_model
from t2s.repo import DEFAULT_PATH
from t2s.report import Table, render_text
from t2s.rollout import RolloutSummary, new_run_id, resolve_skill, run_rollouts
from t2s.tasks import load_suite, split_tasks

FAILURES_SHOWN = 10


@main.command("rollout")
@click.option(
    "--tasks", "suite", default="bundled", show_default=True, help="`bundled` or a suite directory."
)
@split_option
@ratio_option
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N tasks of the split.")
@click.option(
    "--skill",
    "skill_target",
    help="A skill directory, or a ref of the skills repository (default: its main).",
)
@click.option("--no-skill", is_flag=True, help="Run the agent with no skill at all.")
@click.option(
    "--repo",
    "repo_path",
    default=DEFAULT_PATH,
    show_default=True,
    type=click.Path(file_okay=False),
    help="The skills repository --skill refs are looked up in.",
)
@model_option
@workers_option
@parallel_option
@click.option(
    "--turns", type=click.IntRange(min=1), default=20, show_default=True, help="Turns per task."
)
@click.option(
    "--tokens",
    type=click.IntRange(min=1),
    default=60000,
    show_default=True,
    help="Prompt + completion tokens per task.",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=16),
    default=512,
    show_default=True,
    help="Most tokens of one model reply.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=600,
    show_default=True,
    help="Seconds one task may take before its worker is replaced.",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    help="Where the run's records go (default ./runs/<run-id>); give it again to resume.",
)
@click.option("--run-id", help="Name of the run (default: date, time and 4 hex digits).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def rollout(
    suite,
    split,
    ratio,
    limit,
    skill_target,
    no_skill,
    repo_path,
    model,
    workers,
    parallel,
    turns,
    tokens,
    max_tokens,
    timeout,
    run_dir,
    run_id,
    quiet,
):
    """Roll out the agent on every task of a suite; resumable (run it again to continue)."""
    if no_skill and skill_target:
        raise ConfigError("--skill and --no-skill exclude each other: give one")
    loaded = load_suite(suite)
    tasks = split_tasks(loaded.tasks, split, ratio)[:limit]
    if not tasks:
        raise TaskError(f"no tasks in the {split} split of {suite}: check --split and --ratio")
    if no_skill:
        skill, skill_ref, skill_commit = None, "", ""
    else:
        skill, skill_ref, skill_commit = resolve_skill(skill_target, repo_path)
    run_id = run_id or (None if run_dir else new_run_id())
    run_dir = Path(run_dir) if run_dir else Path("runs") / run_id
    summary = run_rollouts(
        run_dir,
        tasks,
        skill,
        skill_ref,
        skill_commit,
        resolve_model(model),
        workers=workers,
        parallel=parallel,
        budget=AgentBudget(turns=turns, tokens=tokens, max_tokens=max_tokens),
        timeout=timeout,
        progress=not quiet,
        run_id=run_id,
        split=split,
    )
    click.echo(format_summary(summary))


def format_summary(summary: RolloutSummary) -> str:
    table = Table(["kind", "tasks", "solved", "soft"])
    for kind, counts in summary.by_kind.items():
        table.add(kind, counts["tasks"], counts["solved"], f"{counts['soft']:.2f}")
    table.add("total", summary.tasks, summary.solved, f"{summary.soft_mean:.2f}")
    tokens = summary.tokens
    lines = [
        (
            f"Run {summary.run_id} in {summary.run_dir}: {summary.ran} rolled out now, "
            f"{summary.skipped} already recorded ({summary.seconds:.0f}s)"
        ),
        "",
        render_text(table).rstrip(),
        "",
        (
            f"Solved {summary.solved}/{summary.tasks} (hard {summary.hard_rate:.2f}, "
            f"soft {summary.soft_mean:.2f}); tokens: {tokens['prompt']} prompt, "
            f"{tokens['completion']} completion, {tokens['prompt_eval']} evaluated"
        ),
    ]
    if summary.ran:
        lines.append(
            f"Time outside the model (tools, replay, checking): "
            f"{100 * summary.outside_model_share:.1f}% of {summary.rollout_seconds:.0f}s"
        )
    if summary.failures:
        lines += ["", "Unsolved:"]
        for task_id, why in summary.failures[:FAILURES_SHOWN]:
            lines.append(f"  {task_id}: {why}")
        if len(summary.failures) > FAILURES_SHOWN:
            lines.append(f"  ... and {len(summary.failures) - FAILURES_SHOWN} more")
    return "\n".join(lines)
