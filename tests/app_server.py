"""Shared by the app and browser tests: checkpoints to serve, and the app running on 127.0.0.1."""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from kaldn.checkpoint import save_checkpoint
from kaldn.models import create_model

X4_CONVS = ("dsconv", "ldsconv", "kdsconv-det", "kdsconv-avg", "kdsconv-max", "kdsconv-fixed")


def write_throwaway_checkpoints(folder: Path, names: list[str]) -> Path:
    """Untrained models whose residual branch is damped, so outputs stay close to bicubic."""
    torch.manual_seed(0)
    for name in names:
        model = create_model(name)
        with torch.no_grad():
            for p in model.upsample.parameters():
                p.mul_(0.05)
        save_checkpoint(folder / name, model, {"note": "throwaway test checkpoint, untrained"})
    return folder


def bundled_x4() -> list[str]:
    """The trained tiny x4 models: checkpoints/ (or the folder KALDN_CHECKPOINTS names, as kaldn.hub does)."""
    from kaldn.hub import bundled_dir
    return sorted(p.name for p in bundled_dir().glob("tiny-*-x4")
                  if (p / "model.safetensors").is_file() and (p / "config.json").is_file())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(fallback_checkpoints: Path) -> Iterator[dict]:
    """The app on 127.0.0.1:<free port>, offline; bundled tiny x4 checkpoints if any, else the fallback folder.

    Environment changes are undone on exit (a module-scoped fixture cannot use monkeypatch).
    """
    real = bundled_x4()
    saved = {k: os.environ.get(k) for k in ("KALDN_CHECKPOINTS", "HF_HUB_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    if not real:
        os.environ["KALDN_CHECKPOINTS"] = str(fallback_checkpoints)
    import app
    from kaldn import compare as C

    # A clean slate when another test module already used the app in this process: no fine-tuned models.
    app.REGISTRY = app.FINETUNE.registry = C.FineTunedRegistry()
    demo = app.build_demo()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False,
                quiet=True, **app.launch_kwargs())
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "real": real, "app": app}
    finally:
        demo.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
