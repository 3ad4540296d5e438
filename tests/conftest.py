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


@pytest.fixture(scope="session")
def generator_dir(tmp_path_factory, digits_split) -> Path:
    """A tiny embedded generator (``tiny_models.TINY_GENERATOR``) trained once on the digits train split
    (read-only for tests: copy it to ``tmp_path`` to change it)."""
    from tiny_models import TINY_GENERATOR

    from factory.train.generator import train_generator

    out = tmp_path_factory.mktemp("generator") / "generator"
    train_generator(digits_split[0], TINY_GENERATOR, out)
    return out


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory, digits_split) -> Path:
    """A small embedded CLIP scorer folder (``tiny_models.SMALL_CLIP``) trained once on the digits train
    split (read-only for tests)."""
    from tiny_models import SMALL_CLIP

    from factory.train.clip import train_clip

    out = tmp_path_factory.mktemp("clip") / "clip"
    train_clip(digits_split[0], SMALL_CLIP, out)
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models are all overhead: one torch thread is ~5x faster than two on a busy 2-core machine. A module
    uses it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, which the browser checks drive (``make browser`` installs it, ``make test`` runs that):
    skipped where it is missing, except under CI (``CI`` set), where a missing browser fails."""
    from factory.measure.browser import CHROMIUM

    if not CHROMIUM.exists():
        why = f"{CHROMIUM} not found (make browser installs Debian's chromium)"
        if os.environ.get("CI"):
            pytest.fail(why + "; CI is set, so the browser test must run")
        pytest.skip(why)
    return CHROMIUM
