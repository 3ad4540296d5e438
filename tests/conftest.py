"""Shared fixtures. Everything here is offline and CPU-only."""

import os
import tempfile

# Offline before any Hugging Face import; keep caches out of the user's home.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", os.path.join(tempfile.gettempdir(), "factory-test-hf-home"))
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# torch's OpenMP threads busy-wait by default; on a loaded 2-core machine that wastes most of the CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
IMAGENETTE = SHARED / "data" / "imagenette-mini"


@pytest.fixture(scope="session")
def imagenette() -> Path:
    if not IMAGENETTE.is_dir():
        pytest.fail(f"test data missing: {IMAGENETTE} (../shared must sit beside the repository)")
    return IMAGENETTE


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Path:
    """sklearn digits ingested once per session (read-only for tests)."""
    from factory.data.ingest import ingest

    out = tmp_path_factory.mktemp("digits") / "digits"
    ingest("sklearn:digits", out, shard_size=500)
    return out


@pytest.fixture(scope="session")
def digits_split(tmp_path_factory, digits) -> tuple[Path, Path]:
    from factory.data.ingest import split

    root = tmp_path_factory.mktemp("digits_split")
    split(digits, root / "train", root / "test", test_fraction=0.2, seed=0)
    return root / "train", root / "test"
