"""The `t2s` command. Each command parses options, calls one core function, prints the result.

Command groups live in sibling modules; this module owns the top-level group and the one place
where t2s's own errors become a friendly message and a non-zero exit.
"""

import sys

import click

from t2s.errors import T2SError


class T2SGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except T2SError as error:
            click.echo(f"Error: {error}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted. Run the same command again to continue.", err=True)
            sys.exit(130)


@click.group(cls=T2SGroup)
@click.version_option(package_name="t2s")
def main():
    """t2s: learn agent skills from execution traces, with local models and git."""


def _register():
    # Imported for their side effect of adding commands to `main`.
    from t2s.cli import (  # noqa: F401
        analyze_cmd,
        evolve_cmd,
        merge_cmd,
        models_cmd,
        repo_cmd,
        rollout_cmd,
        tasks_cmd,
        validate_cmd,
    )


_register()
