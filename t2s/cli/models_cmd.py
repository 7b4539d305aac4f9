"""`t2s models`: the GGUF files under models/, read from their metadata (nothing is loaded)."""

import click

from t2s.cli import main
from t2s.models import list_models


@main.command("models")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory of GGUF files (default: models/, or $T2S_MODELS_DIR).",
)
def models_command(directory):
    """List GGUF models: architecture, parameters, quantization, trained context.

    KV/4K is the memory a 4096-token conversation's f16 KV cache takes: each worker holds
    one (T2S_CTX sets the size), times --parallel.
    """
    listed = list_models(directory)
    if not listed:
        click.echo("No .gguf files found. Run `make model` for the embedded model.")
        return
    header = ("FILE", "ARCH", "PARAMS", "QUANT", "CONTEXT", "KV/4K", "SIZE")
    rows = []
    for entry in listed:
        info = entry.info
        if info is None:
            rows.append((entry.path.name, f"unreadable: {entry.problem}"))
            continue
        rows.append(
            (
                entry.path.name,
                info.architecture,
                info.size_label,
                info.quantization,
                str(info.context_length or "?"),
                _megabytes(info.kv_bytes_per_token * 4096) if info.kv_bytes_per_token else "?",
                _megabytes(info.file_size),
            )
        )
    # An unreadable file's reason runs on from the second column, so it sets no width there.
    widths = [
        max(len(row[i]) for row in [header, *rows] if i == 0 or len(row) == len(header))
        for i in range(len(header) - 1)
    ]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths)] + [row[-1]]
        click.echo("  ".join(cells).rstrip())


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.0f} MB"
