"""`t2s analyze`: options reach the core, the summary table, clear errors."""

from __future__ import annotations

from click.testing import CliRunner
from test_analysts import FIXING_STEPS, RUN_ID, analyst_model, make_run

from t2s.cli import main


def _invoke(tmp_path, monkeypatch, *args, source=None):
    used = []

    def fake_resolve(spec, **options):
        used.append(spec)
        return source

    monkeypatch.setattr("t2s.cli.analyze_cmd.resolve_model", fake_resolve)
    result = CliRunner().invoke(
        main,
        [
            "analyze",
            *args,
            "--runs-dir",
            str(tmp_path / "runs"),
            "--repo",
            str(tmp_path / "skills_repo"),
            "--workers",
            "1",
            "--quiet",
        ],
    )
    return result, used


def test_analyze_prints_the_summary_table(tmp_path, monkeypatch):
    make_run(tmp_path, {"sum-a": 100, "sum-b": 80, "max-c": 50})
    result, used = _invoke(
        tmp_path, monkeypatch, RUN_ID, "--model", "my-model", "--turns", "5",
        source=analyst_model(FIXING_STEPS),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert used == ["my-model"]
    lines = result.output.splitlines()
    assert lines[0].startswith(f"Run {RUN_ID}: 3 of 3 trajectories")
    assert "3 analysed now, 0 already done" in lines[0]
    table = {line.split()[0]: line.split()[1:] for line in lines[3:6]}
    # analysed, fixed, dropped, branches, rejected, errors
    assert table["success"] == ["1", "-", "-", "1", "0", "0"]
    # max-c's scripted fix writes a sum, not the maximum: it never passes and is dropped.
    assert table["error"] == ["2", "1", "1", "1", "0", "0"]
    assert table["total"] == ["3", "1", "1", "2", "0", "0"]
    assert "dropped   not-fixed" in result.output
    assert f"t2s/{RUN_ID}/patch/" in result.output

    again, _ = _invoke(tmp_path, monkeypatch, RUN_ID, source=analyst_model(FIXING_STEPS))
    assert again.exit_code == 0
    assert "0 analysed now, 3 already done" in again.output


def test_analyze_accepts_a_run_directory_and_the_analysts_option(tmp_path, monkeypatch):
    run_dir, _ = make_run(tmp_path, {"sum-a": 100, "sum-b": 80})
    result, _ = _invoke(
        tmp_path, monkeypatch, str(run_dir), "--analysts", "success",
        source=analyst_model(FIXING_STEPS),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "1 of 2 trajectories" in result.output
    assert (run_dir / "analysis" / "sum-b.json").is_file()
    assert not (run_dir / "analysis" / "sum-a.json").exists()


def test_unknown_run_is_a_one_line_error(tmp_path, monkeypatch):
    make_run(tmp_path, {"sum-a": 100})
    result, _ = _invoke(tmp_path, monkeypatch, "no-such-run", source=analyst_model(FIXING_STEPS))
    assert result.exit_code == 1
    assert result.output.startswith("Error: no run 'no-such-run'")
    assert "Traceback" not in result.output


def test_missing_repository_is_a_one_line_error(tmp_path, monkeypatch):
    run_dir, _ = make_run(tmp_path, {"sum-a": 100})
    result = CliRunner().invoke(
        main, ["analyze", str(run_dir), "--repo", str(tmp_path / "elsewhere"), "--quiet"]
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error: ")
    assert not (run_dir / "analysis").exists()
