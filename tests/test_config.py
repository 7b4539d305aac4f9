import pytest

from t2s.config import Config, load_config
from t2s.errors import ConfigError


def write_toml(directory, text):
    (directory / "t2s.toml").write_text(text, encoding="utf-8")


def test_defaults_without_a_file(tmp_path):
    config = load_config({}, cwd=tmp_path)
    assert config == Config()


def test_file_overrides_defaults_and_command_line_overrides_file(tmp_path):
    write_toml(tmp_path, 'model = "big.gguf"\nrounds = 3\nsplit-ratio = 0.6\nworkers = 4\n')
    config = load_config({"rounds": 2, "workers": None, "model": None}, cwd=tmp_path)
    assert config.model == "big.gguf"  # from the file
    assert config.rounds == 2  # the command line wins
    assert config.workers == 4  # not given on the command line: the file applies
    assert config.split_ratio == 0.6


def test_empty_multiple_option_does_not_hide_the_file(tmp_path):
    write_toml(tmp_path, 'skills = ["main", "t2s/x/result"]\n')
    assert load_config({"skills": ()}, cwd=tmp_path).skills == ["main", "t2s/x/result"]
    assert load_config({"skills": ("other",)}, cwd=tmp_path).skills == ["other"]


def test_unknown_key_in_file_is_named(tmp_path):
    write_toml(tmp_path, "rounds = 2\nworkerz = 3\n")
    with pytest.raises(ConfigError, match="unknown option 'workerz'") as caught:
        load_config({}, cwd=tmp_path)
    assert "t2s.toml" in str(caught.value)


def test_wrong_type_and_bad_values_are_errors(tmp_path):
    write_toml(tmp_path, 'rounds = "two"\n')
    with pytest.raises(ConfigError, match="'rounds' must be int"):
        load_config({}, cwd=tmp_path)
    write_toml(tmp_path, "rounds = true\n")
    with pytest.raises(ConfigError, match="'rounds' must be int"):
        load_config({}, cwd=tmp_path)
    write_toml(tmp_path, 'analysts = "both"\n')
    with pytest.raises(ConfigError, match="analysts must be one of error, success, combined"):
        load_config({}, cwd=tmp_path)
    write_toml(tmp_path, "split_ratio = 1.5\n")
    with pytest.raises(ConfigError, match="split_ratio"):
        load_config({}, cwd=tmp_path)


def test_invalid_toml_is_a_config_error(tmp_path):
    write_toml(tmp_path, "rounds = = 2\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config({}, cwd=tmp_path)


def test_round_trip_through_dict():
    config = Config(model="m.gguf", rounds=2, skills=["main"])
    assert Config.from_dict(config.to_dict()) == config


def test_parallel_is_left_to_the_environment_unless_given(tmp_path):
    assert load_config({}, cwd=tmp_path).parallel is None  # the pool reads $T2S_PARALLEL
    write_toml(tmp_path, "parallel = 4\n")
    assert load_config({"parallel": None}, cwd=tmp_path).parallel == 4
    assert load_config({"parallel": 2}, cwd=tmp_path).parallel == 2
    write_toml(tmp_path, "parallel = 0\n")
    with pytest.raises(ConfigError, match="parallel must be at least 1, got 0"):
        load_config({}, cwd=tmp_path)
