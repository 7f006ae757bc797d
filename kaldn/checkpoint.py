"""The one checkpoint format: a directory with ``model.safetensors`` and ``config.json``.

``config.json`` holds everything needed to rebuild the model (``model`` name,
``arch``, options such as ``descriptor_norm``) and to judge it (training budget,
metrics). The same config is written into the safetensors header as well
(metadata ``kaldn_config``, JSON), so a single ``.safetensors`` file describes
itself: :func:`load_safetensors_file` loads one without its folder. The same
directory is a Hugging Face Hub subfolder unchanged. Only safetensors are ever
read: nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .inference import resolve_device
from .models import create_model, options_taken

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1
CONFIG_METADATA_KEY = "kaldn_config"  # the full config as JSON in the safetensors header


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file."""


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Write through a temporary file in the same folder and rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
    atomic_write(path, write)


def save_checkpoint(directory: str | Path, model: nn.Module, metadata: dict[str, Any] | None = None) -> Path:
    """Save ``model`` (built by ``create_model``) and its config plus ``metadata``."""
    directory = Path(directory)
    config = {"format_version": FORMAT_VERSION, **model.config, **(metadata or {})}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    header = {"format": "pt", "model": config["model"], CONFIG_METADATA_KEY: json.dumps(config)}
    # Weights first, config last: a config present means its weights are complete.
    # The file carries its full config and, when recorded (kaldn.convert), where its weights come from, so a
    # model.safetensors taken out of its folder still says whose weights it holds.
    if "weights" in config:
        header["weights"] = json.dumps(config["weights"], sort_keys=True)
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata=header))
    write_json(directory / CONFIG_NAME, config)
    return directory


def read_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint config") from None
    except (ValueError, RecursionError) as exc:  # not JSON or not UTF-8, a number too long, nesting too deep
        raise CheckpointError(f"{path}: not a valid JSON config ({str(exc)[:200]})") from None
    if not isinstance(config, dict) or "model" not in config:
        raise CheckpointError(f"{path}: config has no 'model' name")
    return config


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model from ``config.json`` and load ``model.safetensors`` strictly.

    Raises ``CheckpointError`` naming the file for an unknown architecture, a
    file that is not safetensors, or tensors that do not match the architecture.
    """
    directory = Path(directory)
    return load_checkpoint_files(directory / WEIGHTS_NAME, directory / CONFIG_NAME, device)


def header_config(metadata: Mapping[str, str], where: str) -> Any:
    """The config a safetensors header records (``kaldn_config``), parsed as it is (callers judge its shape);
    None when the header has none."""
    if CONFIG_METADATA_KEY not in metadata:
        return None
    try:
        return json.loads(metadata[CONFIG_METADATA_KEY])
    except (ValueError, RecursionError) as exc:  # not JSON, a number too long, nesting too deep
        raise CheckpointError(f"{where}: header {CONFIG_METADATA_KEY} is not JSON ({str(exc)[:200]})") from None


def read_safetensors_config(path: str | Path) -> dict[str, Any]:
    """The config a ``.safetensors`` file carries in its header: the full ``kaldn_config``, else its ``model`` name.

    Files written before the full config was stored hold only ``{"model": name}``; that is enough to rebuild
    them (every other setting then takes its default).
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such weights file") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from None
    config = header_config(metadata, str(path))
    if isinstance(config, dict) and "model" in config:
        return config
    if "model" in metadata:
        return {"model": metadata["model"]}
    raise CheckpointError(f"{path}: the file names no model (no {CONFIG_METADATA_KEY} or model in its header) "
                          f"and has no {CONFIG_NAME} beside it")


def load_safetensors_file(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load one ``.safetensors`` file: with ``config.json`` beside it when it is a checkpoint folder's
    ``model.safetensors``, else rebuilt from its own header."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: only .safetensors weights are loaded")
    sibling = path.parent / CONFIG_NAME
    if sibling.is_file() and path.name == WEIGHTS_NAME:
        return load_checkpoint_files(path, sibling, device)
    return _load(path, read_safetensors_config(path), str(path), device)


def load_checkpoint_files(weights_path: str | Path, config_path: str | Path,
                          device: str | torch.device = "cpu") -> nn.Module:
    return _load(Path(weights_path), read_config(config_path), str(config_path), device)


def _load(weights_path: Path, config: dict[str, Any], config_source: str, device: str | torch.device) -> nn.Module:
    device = resolve_device(device)  # "auto", or a bad device, is the caller's error, never the file's
    try:
        model = create_model(config["model"], **options_taken(config["model"], config))  # the rest: defaults
    except ValueError as exc:  # an unknown name, or a bad option value
        raise CheckpointError(f"{config_source}: {exc}") from None
    if weights_path.suffix != ".safetensors":
        raise CheckpointError(f"{weights_path}: only .safetensors weights are loaded")
    try:
        state = load_file(str(weights_path), device=str(device))
    except FileNotFoundError:
        raise CheckpointError(f"{weights_path}: no such weights file") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights_path}: not a valid safetensors file ({exc})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        details = "; ".join(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                            for label, keys in (("missing", missing), ("unexpected", unexpected),
                                                ("wrong shape", wrong)) if keys)
        raise CheckpointError(f"{weights_path}: tensors do not match {config['model']} ({details})")
    model.load_state_dict(state)
    model.config = {**model.config, **{k: v for k, v in config.items() if k not in model.config}}
    return model.to(device).eval()
