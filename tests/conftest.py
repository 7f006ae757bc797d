"""Shared pytest fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # make `import kaldn` work without installing the package
    sys.path.insert(0, str(REPO_ROOT))

SHARED_DATA = REPO_ROOT / ".." / "shared" / "data"

# The x2 models the tests of the hasty ReLU and of fine-tuning need (x4: every variant selected by default).
THROWAWAY_X2 = ("dsconv", "ldsconv", "kdsconv-det")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The benchmark/training images at ../shared/data; skip where absent (users' machines)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} not present")
    return SHARED_DATA.resolve()


@pytest.fixture(scope="session")
def throwaway(tmp_path_factory) -> Path:
    """Untrained checkpoints in a temporary folder (never checkpoints/): every variant the app selects by
    default at x4, three at x2, none at x3."""
    from app_server import DEFAULT_VARIANTS, write_throwaway_checkpoints
    from kaldn.models import variant
    names = [variant(v).model_name(4) for v in DEFAULT_VARIANTS] + [variant(v).model_name(2) for v in THROWAWAY_X2]
    return write_throwaway_checkpoints(tmp_path_factory.mktemp("ckpts"), names)


@pytest.fixture
def use_throwaway(throwaway, monkeypatch) -> Path:
    """Serve the throwaway checkpoints as the bundled folder, offline."""
    monkeypatch.setenv("KALDN_CHECKPOINTS", str(throwaway))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return throwaway
