"""`t2s evolve` (rounds of the whole loop) and `t2s eval` (held-out comparison, ablation).

Options not given here come from `t2s.toml` in the working directory, then from defaults
(t2s/config.py); an option given here always wins.
"""

import click

from t2s.cli import main
from t2s.cli.options import parallel_option
from t2s.config import ANALYST_VARIANTS, SPLITS, load_config


def _shared_options(function):
    options = [
        click.option("--tasks", help="Task suite: `bundled` or a SpreadsheetBench-layout directory."),
        click.option("--model", help="GGUF path or name under models/, or openai:URL#NAME."),
        click.option("--workers", type=int, help="Parallel workers (each loads the model once)."),
        parallel_option,
        click.option("--turns", type=int, help="Agent turn budget per task."),
        click.option("--tokens", type=int, help="Agent token budget per task."),
        click.option("--max-tokens", type=int, help="Tokens per model reply."),
        click.option("--timeout", type=int, help="Seconds one task may take before it is given up."),
        click.option("--limit", type=int, help="Use only the first N tasks of each split."),
        click.option("--split-ratio", type=float, help="Share of the suite used to evolve."),
        click.option("--repo", type=click.Path(file_okay=False), help="Skills repository."),
        click.option("--runs-dir", type=click.Path(file_okay=False), help="Run directories."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@main.command("evolve")
@_shared_options
@click.option("--rounds", type=int, help="Rounds of rollout, analysis, merge and evaluation.")
@click.option("--analysts", type=click.Choice(ANALYST_VARIANTS), help="Which analysts propose patches.")
@click.option("--batch", type=int, help="Patches merged per node of the merge tree.")
@click.option("--skill", help="Ref of the skills repository to start from (default main).")
@click.option("--accept/--no-accept", default=None, help="Move main to each round's result.")
@click.option("--run-id", help="Name of the run (default: continue the matching unfinished run).")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
def evolve_command(quiet, **options):
    """Evolve a skill: rollout on the train split, analysis, merge, held-out evaluation.

    Run the same command again after a crash or Ctrl-C and it continues where it stopped.
    """
    from t2s.evolve import evolve, format_result

    config = load_config(options)
    result = evolve(config, progress=not quiet)
    click.echo(format_result(result))
    for state in result.rounds:
        for note in state.notes:
            click.echo(f"round {state.round}: {note}")
    click.echo(f"Run directory:  {result.run_dir}")
    click.echo(f"Result:         {result.final_ref} ({result.final_commit[:12]}) in {config.repo}")
    click.echo(f"Report:         {result.files['markdown']}")
    if "plot" in result.files:
        click.echo(f"Plot:           {result.files['plot']}")
    click.echo(f"History:        git -C {config.repo} log --graph --oneline --branches")
    # Each round builds on the one before, so accepting the last round fast-forwards main
    # through all of them (its result branch exists even when that round changed nothing).
    changed = any(r.result_commit != r.base_commit for r in result.rounds)
    if not config.accept and changed:
        click.echo(f"Accept it:      t2s accept {result.rounds[-1].run_id} --repo {config.repo}")


@main.command("eval")
@_shared_options
@click.option("--split", type=click.Choice(SPLITS), help="Which tasks to measure on (default test).")
@click.option("--skill", "skills", multiple=True, help="A skill ref or directory; repeat for more columns.")
@click.option("--no-skill", is_flag=True, default=None, help="Add a column without any skill.")
@click.option("--ablate", help="Measure each patch of this run (or evolve run) alone and removed.")
@click.option("--out", type=click.Path(file_okay=False), help="Where to write the report.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
def eval_command(quiet, **options):
    """Compare skills (and no skill) on the same held-out tasks; or ablate a run's patches."""
    from t2s.evaluate import AblationReport, format_ablation, format_report, run_eval

    options["no_skill"] = options["no_skill"] or None  # absent: t2s.toml may set it
    config = load_config(options)
    report = run_eval(config, progress=not quiet)
    if isinstance(report, AblationReport):
        click.echo(format_ablation(report))
        files = report.files
        click.echo(f"Full evaluation: {report.evaluation.files['markdown']}")
    else:
        click.echo(format_report(report))
        files = report.files
    click.echo(f"Markdown: {files['markdown']}")
    click.echo(f"JSON:     {files['json']}")
    click.echo(f"Plot:     {files['plot']}")
