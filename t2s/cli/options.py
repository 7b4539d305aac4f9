"""Options shared by several commands."""

import click

model_option = click.option(
    "--model", default="embedded", show_default=True, help="GGUF name or path, or openai:URL#MODEL."
)
workers_option = click.option(
    "--workers", type=click.IntRange(min=1), help="Worker processes (default 2 or $T2S_WORKERS)."
)
parallel_option = click.option(
    "--parallel",
    type=click.IntRange(min=1),
    help=(
        "Conversations each worker runs at once, batched by the model (default 1 or $T2S_PARALLEL)."
    ),
)
split_option = click.option(
    "--split",
    type=click.Choice(["train", "test", "all"]),
    default="all",
    show_default=True,
    help="Which share of the tasks, split by a hash of each task id.",
)
ratio_option = click.option(
    "--ratio",
    type=click.FloatRange(0.0, 1.0),
    default=0.5,
    show_default=True,
    help="Share of tasks in the train split.",
)
