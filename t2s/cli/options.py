"""Options shared by the commands that run a model in the pool."""

import click

model_option = click.option(
    "--model", default="embedded", show_default=True, help="GGUF name or path, or openai:URL#MODEL."
)
workers_option = click.option(
    "--workers", type=click.IntRange(min=1), help="Worker processes (default 2 or $T2S_WORKERS)."
)
