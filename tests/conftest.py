from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(autouse=True)
def git_identity(tmp_path_factory, monkeypatch):
    """Every git commit in a test has a fixed author and committer, and no user config leaks in."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "T2S Test")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "t2s-test@example.invalid")
    monkeypatch.delenv("T2S_WORKERS", raising=False)
    for variable in ("T2S_PARALLEL", "T2S_THREADS", "T2S_CTX", "T2S_GPU_LAYERS"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def embedded_model_path():
    """The embedded GGUF model; `make test` fetches it first (`make model`)."""
    if not EMBEDDED_MODEL.exists():
        pytest.fail(f"{EMBEDDED_MODEL} is missing: run `make model`")
    return EMBEDDED_MODEL
