"""Tables (aligned text for the terminal, Markdown) and score plots (matplotlib, no display)."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from t2s.fsutil import atomic_write_bytes


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    title: str = ""

    def add(self, *cells: object) -> None:
        self.rows.append([str(cell) for cell in cells])


def render_text(table: Table) -> str:
    """Columns padded to a common width; numbers right-aligned, text left-aligned."""
    widths = [len(h) for h in table.headers]
    for row in table.rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: list[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            out.append(cell.rjust(widths[i]) if i and _numeric(cell) else cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    lines = [table.title] if table.title else []
    lines.append(line(table.headers))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(line(row) for row in table.rows)
    return "\n".join(lines) + "\n"


def render_markdown(table: Table) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    # Right-align the columns that hold numbers (with or without a delta), like the text table.
    align = ["---"] + [
        "---:" if table.rows and all(_numeric(row[i]) for row in table.rows) else "---"
        for i in range(1, len(table.headers))
    ]
    lines = [f"### {table.title}", ""] if table.title else []
    lines += [line(table.headers), "| " + " | ".join(align) + " |"]
    lines += [line(row) for row in table.rows]
    return "\n".join(lines) + "\n"


def plot_bars(
    labels: list[str], series: dict[str, list[float]], path: Path, title: str, ylabel: str
) -> Path:
    """Grouped bars: one group per label, one bar per series (e.g. soft and hard score)."""
    figure, axes = _figure()
    count = max(len(series), 1)
    width = 0.8 / count
    for k, (name, values) in enumerate(series.items()):
        positions = [i + (k - (count - 1) / 2) * width for i in range(len(labels))]
        bars = axes.bar(positions, values, width, label=name)
        # A missing value (NaN) draws no bar and gets no label.
        axes.bar_label(bars, labels=["" if math.isnan(v) else f"{v:.2f}" for v in values], fontsize=8)
    axes.set_xticks(range(len(labels)))
    axes.set_xticklabels([_short(label) for label in labels], rotation=15, ha="right")
    return _finish(figure, axes, path, title, ylabel)


def plot_lines(
    xs: list[int], series: dict[str, list[float]], path: Path, title: str, xlabel: str, ylabel: str
) -> Path:
    """One line per series over xs (e.g. held-out score after each evolve round)."""
    figure, axes = _figure()
    for name, values in series.items():
        axes.plot(xs, values, marker="o", label=name)
    axes.set_xticks(xs)
    axes.set_xlabel(xlabel)
    return _finish(figure, axes, path, title, ylabel)


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # files only: works on a headless machine and in worker processes
    from matplotlib import pyplot

    return pyplot.subplots(figsize=(7, 4), dpi=100)


def _finish(figure, axes, path: Path, title: str, ylabel: str) -> Path:
    from matplotlib import pyplot

    axes.set_title(title)
    axes.set_ylabel(ylabel)
    axes.set_ylim(0, 1.05)
    axes.grid(axis="y", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    pyplot.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def _numeric(cell: str) -> bool:
    """A number, possibly followed by its delta: "0.500 (+0.250)"."""
    text = (cell.split() or [""])[0].rstrip("%s").lstrip("+-±")
    return bool(text) and text.replace(".", "", 1).replace(",", "").isdigit()


def _short(label: str, limit: int = 24) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"
