"""``pip install`` of the repository works outside the checkout: the ``kaldn`` command and ``load_model``, offline.

The package is built from a copy of what the build reads (pyproject.toml, README.md, kaldn/, checkpoints/),
so the checkout gets no build/ folder, and installed with ``--no-deps --target`` beside this environment's
own dependencies: the test checks the package, not the index.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _setuptools_is_recent() -> bool:
    try:
        return int(version("setuptools").split(".")[0]) >= 77
    except Exception:  # noqa: BLE001 - not installed, or an odd version string
        return False


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("kaldn", "checkpoints"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    target = tmp / "site"
    # Without build isolation when this environment's setuptools reads the pyproject (nothing to download).
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(src),
           *(["--no-build-isolation"] if _setuptools_is_recent() else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return target


def _offline_env(site: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KALDN_", "HF_", "PYTHON"))}
    # The Hub on a closed port and an empty cache: the bundled checkpoints must be found in the package.
    env.update(PYTHONPATH=str(site), HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(home / "hf"),
               HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1")
    return env


def test_the_installed_command_upscales_offline_from_another_directory(installed, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(work / "photo.png")
    env = _offline_env(installed, tmp_path)
    proc = subprocess.run([str(installed / "bin" / "kaldn"), "photo.png", "--model", "tiny-kdsconv-det-x4",
                           "--out", "out/"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(work / "out" / "photo_x4.png").size == (96, 80)
    assert "hub" not in proc.stderr  # the bundled weights by default: no Hub asked
    proc = subprocess.run([str(installed / "bin" / "kaldn"), "photo.png", "--model", "tiny-kdsconv-det-x4",
                           "--out", "out/", "--source", "auto"], cwd=work, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "using bundled " + str(installed / "kaldn" / "bundled") in proc.stderr

    code = ("import kaldn, kaldn.hub; m = kaldn.load_model('tiny-kdsconv-det-x4'); "
            "print(kaldn.__file__); print(kaldn.hub.bundled_dir()); print(m.config['model'])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    module, bundled, name = proc.stdout.split()
    assert Path(module).is_relative_to(installed) and Path(bundled) == installed / "kaldn" / "bundled"
    assert name == "tiny-kdsconv-det-x4"
    shipped = sorted(p.name for p in (ROOT / "checkpoints").iterdir() if (p / "model.safetensors").is_file())
    assert sorted(p.name for p in Path(bundled).iterdir() if p.is_dir()) == shipped
    # Every file a checkpoint folder ships is installed with it (the training curves too), and nothing else.
    for name in shipped:
        assert sorted(p.name for p in (Path(bundled) / name).iterdir()) == \
            sorted(p.name for p in (ROOT / "checkpoints" / name).iterdir())
