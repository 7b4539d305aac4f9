"""`t2s validate [PATH|REF]`: check a skill against the published format rules."""

import sys

import click

from t2s.cli import main
from t2s.skill import load_skill, validate_skill


@main.command("validate")
@click.argument("target", required=False)
@click.option(
    "--repo",
    "repo_path",
    default="skills_repo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Skills repository in which TARGET is looked up as a ref.",
)
def validate(target, repo_path):
    """Check the skill at TARGET (a directory, or a ref of the skills repository).

    Without TARGET: the repository's main if the repository exists, else the current directory.
    Prints each violation as file:line: message and exits 1 when there are any.
    """
    skill, label = load_skill(target, repo_path)
    violations = validate_skill(skill)
    for violation in violations:
        click.echo(str(violation))
    if violations:
        click.echo(f"{len(violations)} violation(s) in {label}", err=True)
        sys.exit(1)
    click.echo(f"ok: {skill.name} ({len(skill.files)} files)")
