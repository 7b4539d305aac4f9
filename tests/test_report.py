import json
import re

from t2s.report import Table, plot_bars, plot_lines, render_markdown, render_text


def sample_table():
    table = Table(["measure", "main", "result"], title="Scores")
    table.add("soft score", "0.250", "0.500 (+0.250)")
    table.add("solved (of 4)", "1", "2 (+1)")
    return table


def test_text_table_is_aligned():
    lines = render_text(sample_table()).splitlines()
    assert lines[0] == "Scores"
    header, rule, *rows = lines[1:]
    segments = [(m.start(), m.end()) for m in re.finditer(r"-+", rule)]
    assert len(segments) == 3
    for line, cells in zip([header] + rows, [["measure", "main", "result"],
                                              ["soft score", "0.250", "0.500 (+0.250)"],
                                              ["solved (of 4)", "1", "2 (+1)"]]):
        for (start, end), cell in zip(segments, cells):
            position = line.index(cell, start)
            assert start <= position and position + len(cell) <= end, (line, cell)
    # Numbers are right-aligned under their header.
    assert rows[0][segments[1][0]:segments[1][1]] == "0.250"
    assert rows[1][segments[1][0]:segments[1][1]] == "    1"


def test_markdown_table_has_header_alignment_and_escapes_pipes():
    table = sample_table()
    table.add("a|b", "1", "2")
    text = render_markdown(table)
    lines = text.splitlines()
    assert lines[0] == "### Scores"
    assert lines[2] == "| measure | main | result |"
    assert lines[3] == "| --- | ---: | ---: |"
    assert "| a\\|b | 1 | 2 |" in lines


def test_plots_are_png_files(tmp_path):
    bars = plot_bars(["main", "no skill"], {"soft": [0.5, 0.25], "hard": [0.25, 0.0]},
                     tmp_path / "bars.png", "Scores", "score")
    lines = plot_lines([0, 1, 2], {"soft": [0.1, 0.2, 0.3]}, tmp_path / "sub" / "lines.png",
                       "Rounds", "round", "score")
    for path in (bars, lines):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(data) > 2000
    assert not list(tmp_path.glob("**/*.tmp"))
    json.dumps({"ok": True})
