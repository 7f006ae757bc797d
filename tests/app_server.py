"""Shared by the library and app tests: synthetic images, throwaway checkpoints, the app on 127.0.0.1."""

from __future__ import annotations

import io
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from kaldn.checkpoint import save_checkpoint
from kaldn.models import create_model, variants
from kaldn.resize import imresize

# The variants the app selects by default (every depthwise variant; the standard conv is offered, not selected).
DEFAULT_VARIANTS = tuple(v.key for v in variants() if v.default)


def rng_image(h: int, w: int, channels: int = 3, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hi = 65535 if dtype == np.uint16 else 255
    # Smooth-ish content (noise upsampled) so SSIM/PSNR are meaningful.
    small = rng.integers(0, hi + 1, size=(h // 4 + 2, w // 4 + 2, channels)).astype(np.float64)
    big = imresize(small, output_shape=(h, w))
    return np.clip(np.round(big), 0, hi).astype(dtype)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_throwaway_checkpoints(folder: Path, names: list[str]) -> Path:
    """Untrained models; an RDN's residual branch is damped, so its outputs stay close to bicubic."""
    torch.manual_seed(0)
    for name in names:
        model = create_model(name)
        with torch.no_grad():
            for p in getattr(model, "upsample", torch.nn.Identity()).parameters():
                p.mul_(0.05)
        save_checkpoint(folder / name, model, {"note": "throwaway test checkpoint, untrained"})
    return folder


def bundled_x4() -> list[str]:
    """The trained x4 models of the app's variants in the bundled folder (``KALDN_CHECKPOINTS`` if set)."""
    from kaldn.hub import bundled_dir
    names = [v.model_name(4) for v in variants()]
    return sorted(n for n in names if (bundled_dir() / n / "model.safetensors").is_file()
                  and (bundled_dir() / n / "config.json").is_file())


def featured_x4() -> list[str]:
    """The family's featured models (another backbone, ticked by default) shipped at x4: the `small` showcase."""
    from kaldn.hub import bundled_dir
    from kaldn.registry import architectures
    names = [f"{name}-x4" for arch in architectures() for name in arch.featured]
    return sorted(n for n in names if (bundled_dir() / n / "model.safetensors").is_file()
                  and (bundled_dir() / n / "config.json").is_file())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(fallback_checkpoints: Path) -> Iterator[dict]:
    """The app on 127.0.0.1:<free port>, offline; bundled x4 checkpoints if any, else the fallback folder.

    ``real``: the bundled x4 models served (empty with the fallback). Environment changes are undone on
    exit (a module-scoped fixture cannot use monkeypatch).
    """
    real = bundled_x4()
    saved = {k: os.environ.get(k) for k in ("KALDN_CHECKPOINTS", "HF_HUB_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    if not real:
        os.environ["KALDN_CHECKPOINTS"] = str(fallback_checkpoints)
    import app
    from kaldn.session_models import SessionModels

    # A clean slate when another test module already used the app in this process: no fine-tuned models.
    app.SESSION_MODELS = app.FINETUNE.registry = SessionModels(max_idle_s=app.SETTINGS.session_ttl,
                                                               on_forget=app.CACHE.forget)
    demo = app.build_demo()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False,
                quiet=True, **app.launch_kwargs())
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "real": real, "app": app, "demo": demo}
    finally:
        demo.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
