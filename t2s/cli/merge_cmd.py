"""`t2s merge RUN`: consolidate a run's patch branches; `t2s accept RUN`: move main to the result."""

from __future__ import annotations

import os
from pathlib import Path

import click

from t2s.cli import main
from t2s.cli.repo_cmd import repo_option
from t2s.consolidate import (
    DEFAULT_BATCH,
    DEFAULT_MIN_SUPPORT,
    DEFAULT_REPAIR_ROUNDS,
    OPERATOR_MAX_TOKENS,
    SINGLETON_POLICIES,
    ConsolidationResult,
    accept,
    consolidate,
)
from t2s.repo import SkillsRepo

SHOWN = 10  # lessons listed per kind in the summary; the rest are in the commit and runs dir


@main.command("merge")
@click.argument("run_id", metavar="RUN")
@click.option("--batch", default=DEFAULT_BATCH, show_default=True, type=click.IntRange(min=2),
              help="Branches merged per node of the tree.")
@click.option("--model", default="embedded", show_default=True,
              help="Merge operator: a GGUF under models/, a path, or openai:URL#MODEL.")
@click.option("--rules-only", is_flag=True,
              help="No merge operator: git, the merge rules and the guardrails only.")
@click.option("--min-support", default=DEFAULT_MIN_SUPPORT, show_default=True,
              type=click.IntRange(min=1),
              help="Patches that must propose a lesson for it to stay in SKILL.md.")
@click.option("--singletons", type=click.Choice(SINGLETON_POLICIES), default="drop",
              show_default=True,
              help="What happens to lessons below --min-support at the last level.")
@click.option("--repair-rounds", default=DEFAULT_REPAIR_ROUNDS, show_default=True,
              type=click.IntRange(min=0), help="Retries the operator gets with the guardrails' reasons.")
@click.option("--max-tokens", default=OPERATOR_MAX_TOKENS, show_default=True,
              type=click.IntRange(min=16), help="Tokens per operator reply.")
@click.option("--workers", default=os.cpu_count() or 1, show_default=True,
              type=click.IntRange(min=1), help="Git merges run in parallel.")
@click.option("--accept", "accept_result", is_flag=True,
              help="Move main to the result when done (as `t2s accept RUN`).")
@repo_option
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Where the run's records live (support maps go to RUNS_DIR/RUN/merge/).")
def merge(run_id, batch, model, rules_only, min_support, singletons, repair_rounds, max_tokens,
          workers, accept_result, repo_path, runs_dir):
    """Merge the patch branches t2s/RUN/patch/* into t2s/RUN/result, as a tree of merge commits.

    Groups of BATCH branches are merged level after level with git's three-way merge and the
    skill merge driver's rules, then consolidated by the merge operator (unless --rules-only),
    behind guardrails. Running it again after an interruption reuses finished nodes.
    """
    from t2s.models import resolve_model

    repo = SkillsRepo.open(repo_path)
    source = None if rules_only else resolve_model(model)
    result = consolidate(
        repo, run_id, model=source, batch=batch, min_support=min_support,
        singletons=singletons, repair_rounds=repair_rounds, max_tokens=max_tokens,
        workers=workers, run_dir=Path(runs_dir) / run_id,
    )
    click.echo(format_result(result))
    if accept_result:
        _echo_accept(repo, run_id)
    else:
        click.echo(f"Review: git -C {repo.path} log --graph {result.result_ref}; "
                   f"then: t2s accept {run_id}")


@main.command("accept")
@click.argument("run_id", metavar="RUN")
@repo_option
def accept_command(run_id, repo_path):
    """Move main to t2s/RUN/result, a fast-forward (also through earlier evolve rounds the
    result builds on); refused when main has moved elsewhere since the run."""
    _echo_accept(SkillsRepo.open(repo_path), run_id)


def _echo_accept(repo: SkillsRepo, run_id: str) -> None:
    done = accept(repo, run_id)
    if not done.moved:
        click.echo(f"main already contains the result of run {run_id} ({done.result_sha[:7]}); "
                   "nothing to do")
        return
    line = f"main: {done.previous_main[:7]} -> {done.result_sha[:7]} (run {run_id} accepted"
    if done.also_accepted:
        line += f", and with it {', '.join(done.also_accepted)}"
    click.echo(line + ")")


def format_result(result: ConsolidationResult) -> str:
    nodes = len(result.nodes)
    lines = [
        (f"Merged {result.patches} patch{'es' if result.patches != 1 else ''} of run "
         f"{result.run_id} in {result.levels} level{'s' if result.levels != 1 else ''} "
         f"({nodes} node{'s' if nodes != 1 else ''}, {result.reused} reused): "
         f"{result.result_ref} = {result.result_sha[:7]}"),
        (f"Kept {len(result.kept)} lesson(s), moved {len(result.moved)} to a reference, "
         f"dropped {len(result.dropped)}."),
    ]
    lines += [f"  kept    {lesson.describe()}" for lesson in result.kept[:SHOWN]]
    lines += [f"  moved   {lesson.describe()}" for lesson in result.moved[:SHOWN]]
    lines += [f"  dropped {lesson.describe()}: {why}" for lesson, why in result.dropped[:SHOWN]]
    hidden = sum(max(0, len(items) - SHOWN) for items in (result.kept, result.moved, result.dropped))
    if hidden:
        lines.append(f"  ... {hidden} more in the result's commit message")
    for fallback in result.fallbacks:
        lines.append(f"Fallback to the rules result at {fallback}")
    lines += result.notes
    return "\n".join(lines)
