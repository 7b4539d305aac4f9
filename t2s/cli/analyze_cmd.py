"""`t2s analyze RUN`: every trajectory of a run through its analyst, each surviving patch a branch."""

from __future__ import annotations

from pathlib import Path

import click

from t2s.analysts import ANALYSTS, AnalysisSummary, run_analysis
from t2s.analysts.records import BRANCH, DROPPED, ERROR, ERROR_ANALYST, REJECTED, SUCCESS_ANALYST
from t2s.analysts.run import DEFAULT_MAX_TOKENS, DEFAULT_TURNS
from t2s.cli import main
from t2s.cli.options import model_option, parallel_option, workers_option
from t2s.errors import RunError
from t2s.models import resolve_model
from t2s.repo import DEFAULT_PATH, SkillsRepo


@main.command("analyze")
@click.argument("run")
@click.option(
    "--analysts",
    type=click.Choice(ANALYSTS),
    default="combined",
    show_default=True,
    help="error: failed trajectories only; success: successful ones only; combined: both.",
)
@model_option
@workers_option
@parallel_option
@click.option(
    "--repo",
    "repo_path",
    default=DEFAULT_PATH,
    show_default=True,
    type=click.Path(file_okay=False),
    help="The skills repository the rollout's skill came from; patch branches go here.",
)
@click.option(
    "--runs-dir",
    default="runs",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where run directories live (RUN may also be a path to one).",
)
@click.option(
    "--turns",
    type=click.IntRange(min=1),
    default=DEFAULT_TURNS,
    show_default=True,
    help="Turn budget of each error analyst.",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=16),
    default=DEFAULT_MAX_TOKENS,
    show_default=True,
    help="Most tokens of one model reply.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=1800,
    show_default=True,
    help="Seconds one analysis may take before its worker is stopped and it counts as an error.",
)
@click.option(
    "--retry-errors", is_flag=True, help="Analyse again trajectories whose analysis broke."
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def analyze(
    run,
    analysts,
    model,
    workers,
    parallel,
    repo_path,
    runs_dir,
    turns,
    max_tokens,
    timeout,
    retry_errors,
    quiet,
):
    """Analyse the trajectories of RUN (a run id under --runs-dir, or a run directory)."""
    run_dir = _run_dir(run, runs_dir)
    summary = run_analysis(
        run_dir,
        SkillsRepo.open(repo_path),
        analysts=analysts,
        model=resolve_model(model),
        workers=workers,
        parallel=parallel,
        turns=turns,
        timeout=timeout,
        max_tokens=max_tokens,
        retry_errors=retry_errors,
        progress=not quiet,
    )
    click.echo(format_summary(summary))


def _run_dir(run: str, runs_dir: str) -> Path:
    for candidate in (Path(runs_dir) / run, Path(run)):
        if (candidate / "trajectories").is_dir():
            return candidate
    raise RunError(
        f"no run {run!r}: expected {Path(runs_dir) / run}/trajectories/ (or give a run "
        "directory); run `t2s rollout` first"
    )


def format_summary(summary: AnalysisSummary) -> str:
    lines = [
        (
            f"Run {summary.run_id}: {summary.selected} of {summary.trajectories} trajectories "
            f"for these analysts; {summary.analysed} analysed now, {summary.skipped} already "
            f"done ({summary.seconds:.0f}s)"
        ),
        "",
    ]
    header = ("analyst", "analysed", "fixed", "dropped", "branches", "rejected", "errors")
    rows = []
    for analyst in (SUCCESS_ANALYST, ERROR_ANALYST, None):
        analysed = sum(1 for r in summary.records if analyst in (None, r.analyst))
        rows.append(
            (
                analyst or "total",
                str(analysed),
                "-" if analyst == SUCCESS_ANALYST else str(summary.fixed(analyst)),
                "-" if analyst == SUCCESS_ANALYST else str(summary.count(DROPPED, analyst)),
                str(summary.count(BRANCH, analyst)),
                str(summary.count(REJECTED, analyst)),
                str(summary.count(ERROR, analyst)),
            )
        )
    lines += _table(header, rows)
    reasons = summary.reasons()
    if reasons:
        lines += ["", "Reasons:"]
        for (status, kind), count in sorted(reasons.items(), key=lambda item: (-item[1], item[0])):
            lines.append(f"  {count:>4}  {status:<9} {kind}")
    branches = sorted(r.branch for r in summary.records if r.status == BRANCH)
    if branches:
        lines += [
            "",
            f"Patch branches ({len(branches)}): {branches[0]} ... {branches[-1]}"
            if len(branches) > 3
            else f"Patch branches: {', '.join(branches)}",
        ]
    return "\n".join(lines)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths))
        )
        for row in [header, *rows]
    ]
