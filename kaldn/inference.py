"""Inference: ``upscale(image, model)`` on CPU or CUDA, tiled so memory stays bounded.

Tiles overlap by ``overlap`` LR pixels of context on every side and only each
tile's centre is kept, so a tile's output matches the whole-image output
wherever the receptive field fits in the overlap (seams invisible).
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from .images import check_float_range, image_to_tensor, tensor_to_image
from .layers import fuse
from .resize import imresize

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" picks CUDA when present; asking for CUDA without it is a clear error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):  # torch lists a dozen backends this project never runs on
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {str(device)!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available")
    return device


def prepare_model(model: nn.Module, device: str | torch.device = "auto", precision: str = "fp32") -> nn.Module:
    """A fused, eval-mode, channels_last copy on ``device``: the fast inference path.

    Fusing bakes KDSConv's kernel attention into plain depthwise kernels, so a
    KDSConv model then costs exactly a LinearDSConv model; weight norm (FDIWN)
    is folded into plain weights the same way. fp16/bf16 only on CUDA.
    """
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {', '.join(DTYPES)}, got {precision!r}")
    device = resolve_device(device)
    if precision != "fp32" and device.type != "cuda":
        raise ValueError(f"precision {precision} needs CUDA; use fp32 on CPU")
    fast = bake_parametrizations(fuse(copy.deepcopy(model))).eval().to(device=device, dtype=DTYPES[precision])
    fast.config = dict(getattr(model, "config", {}), fused=True)
    return fast.to(memory_format=torch.channels_last)


def bake_parametrizations(model: nn.Module) -> nn.Module:
    """Replace parametrized weights (FDIWN's weight norm: g and v) by the plain tensors they compute (in place).

    Same output; the weight is no longer recomputed from g and v on every forward pass.
    """
    for module in model.modules():
        if parametrize.is_parametrized(module):
            values = {name: getattr(module, name).detach().clone() for name in module.parametrizations}
            # Not parametrize.remove_parametrizations: a deep copy shares the generated Parametrized* class
            # with its original, and removal deletes the property from that class, breaking the original.
            module.__class__ = module.__class__.__bases__[0]
            del module.parametrizations
            for name, value in values.items():
                module.register_parameter(name, nn.Parameter(value, requires_grad=False))
    return model


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


def _tiles(h: int, w: int, tile: int | None, overlap: int):
    """(y0, y1, x0, x1) of each tile and (py0, py1, px0, px1) of its padded input window."""
    if tile is None or (h <= tile and w <= tile):
        yield (0, h, 0, w), (0, h, 0, w)
        return
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            yield (y0, y1, x0, x1), (max(y0 - overlap, 0), min(y1 + overlap, h),
                                     max(x0 - overlap, 0), min(x1 + overlap, w))


TILE_SIZE = 256    # LR pixels a side of the part of the image each tile keeps
TILE_OVERLAP = 24  # LR pixels of context each tile reads beyond its edges


def tiled_pixels(h: int, w: int, tile: int | None = TILE_SIZE, overlap: int = TILE_OVERLAP) -> int:
    """Input pixels :func:`upscale` runs through the model for an h x w image: every tile with its overlap."""
    return sum((py1 - py0) * (px1 - px0) for _, (py0, py1, px0, px1) in _tiles(h, w, tile, overlap))


def _checked_image(image: np.ndarray) -> np.ndarray:
    """``image`` as an HxW, HxWx3 or HxWx4 array :func:`upscale` can run, or a ValueError that says what it got."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"upscale expects a numpy image array (HxW, HxWx3 or HxWx4), got {type(image).__name__}; "
                         "kaldn.load_image reads files, np.asarray converts a PIL image")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"upscale expects an HxW, HxWx3 or HxWx4 image array, got shape {image.shape}"
                         + (" (channels first? use image.transpose(1, 2, 0))" if image.ndim == 3
                            and image.shape[0] in (1, 3, 4) else ""))
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"upscale got an empty image (shape {image.shape})")
    if not (image.dtype in (np.uint8, np.uint16) or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"upscale expects uint8, uint16 or float (in [0, 1]) pixels, got {image.dtype}")
    check_float_range(image)  # alpha included: 0-255 floats would come out white, not refused
    return image


@torch.inference_mode()
def upscale(image: np.ndarray, model: nn.Module, tile: int | None = TILE_SIZE, overlap: int = TILE_OVERLAP,
            progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Upscale an image array by the model's scale; the model comes from ``prepare_model``.

    Accepts HxW, HxWx1, HxWx3 or HxWx4 arrays (uint8, uint16 or float in [0, 1]) and
    returns the same layout (HxWx1 as HxW) and dtype; anything else is a ValueError. Alpha is upscaled separately with the
    project's bicubic ``imresize``; grayscale goes through the RGB model and
    comes back as its mean. Each tile is converted to the output dtype as it
    comes, so peak memory is one tile's activations plus the output image.
    """
    image = _checked_image(image)
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1):
        raise ValueError(f"tile must be a positive number of LR pixels or None (whole image), got {tile!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or overlap < 0:
        raise ValueError(f"overlap must be a number of LR pixels >= 0, got {overlap!r}")
    scale = model.config["scale"]
    device, dtype = _model_device_dtype(model)
    gray = image.ndim == 2
    rgb = np.repeat(image[..., None], 3, axis=2) if gray else image[..., :3]
    alpha = image[..., 3] if image.ndim == 3 and image.shape[2] == 4 else None
    out_dtype = image.dtype if image.dtype in (np.uint8, np.uint16) else np.float32
    x = image_to_tensor(rgb)
    h, w = rgb.shape[:2]
    out = np.empty((h * scale, w * scale, 3), dtype=out_dtype)
    tiles = list(_tiles(h, w, tile, overlap))
    for done, ((y0, y1, x0, x1), (py0, py1, px0, px1)) in enumerate(tiles, start=1):
        part = x[:, :, py0:py1, px0:px1].to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        result = model(part).float().cpu()
        oy, ox = (y0 - py0) * scale, (x0 - px0) * scale
        result = result[:, :, oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale]
        out[y0 * scale:y1 * scale, x0 * scale:x1 * scale] = tensor_to_image(result, dtype=out_dtype)
        if progress:
            progress(done, len(tiles))
    if gray:
        mean = out.mean(axis=2, dtype=np.float32)
        return mean if out_dtype == np.float32 else np.round(mean).astype(out_dtype)
    if alpha is not None:
        out = np.concatenate([out, imresize(alpha, scale=scale)[..., None].astype(out_dtype)], axis=2)
    return out
