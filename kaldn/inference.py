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

from .images import image_to_tensor, tensor_to_image
from .layers import fuse

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" picks CUDA when present; asking for CUDA without it is a clear error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available")
    return device


def prepare_model(model: nn.Module, device: str | torch.device = "auto", precision: str = "fp32") -> nn.Module:
    """A fused, eval-mode, channels_last copy on ``device``: the fast inference path.

    Fusing bakes KDSConv's kernel attention into plain depthwise kernels, so a
    KDSConv model then costs exactly a LinearDSConv model. fp16/bf16 only on CUDA.
    """
    device = resolve_device(device)
    if precision != "fp32" and device.type != "cuda":
        raise ValueError(f"precision {precision} needs CUDA; use fp32 on CPU")
    fast = fuse(copy.deepcopy(model)).eval().to(device=device, dtype=DTYPES[precision])
    fast.config = dict(getattr(model, "config", {}), fused=True)
    return fast.to(memory_format=torch.channels_last)


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


@torch.inference_mode()
def upscale_tensor(x: torch.Tensor, model: nn.Module, scale: int, tile: int | None = 256, overlap: int = 24,
                   progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """(1, 3, H, W) float in [0, 1] on any device -> (1, 3, sH, sW) float32 on the CPU."""
    device, dtype = _model_device_dtype(model)
    _, _, h, w = x.shape

    def run(part: torch.Tensor) -> torch.Tensor:
        part = part.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        return model(part).float().cpu()

    if tile is None or (h <= tile and w <= tile):
        out = run(x)
        if progress:
            progress(1, 1)
        return out
    out = torch.empty(1, 3, h * scale, w * scale)
    ys, xs = range(0, h, tile), range(0, w, tile)
    total, done = len(ys) * len(xs), 0
    for y0 in ys:
        for x0 in xs:
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            py0, px0 = max(y0 - overlap, 0), max(x0 - overlap, 0)
            py1, px1 = min(y1 + overlap, h), min(x1 + overlap, w)
            result = run(x[:, :, py0:py1, px0:px1])
            oy, ox = (y0 - py0) * scale, (x0 - px0) * scale
            out[:, :, y0 * scale:y1 * scale, x0 * scale:x1 * scale] = \
                result[:, :, oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale]
            done += 1
            if progress:
                progress(done, total)
    return out


def upscale(image: np.ndarray, model: nn.Module, tile: int | None = 256, overlap: int = 24,
            progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Upscale an image array by the model's scale; the model comes from ``prepare_model``.

    Accepts HxW, HxWx3 or HxWx4 arrays (uint8, uint16 or float in [0, 1]) and
    returns the same layout and dtype. Alpha is upscaled separately with the
    project's bicubic ``imresize``; grayscale goes through the RGB model and
    comes back as its mean.
    """
    from .resize import imresize

    scale = model.config["scale"]
    gray = image.ndim == 2
    rgb = np.repeat(image[..., None], 3, axis=2) if gray else image[..., :3]
    alpha = image[..., 3] if image.ndim == 3 and image.shape[2] == 4 else None
    out = upscale_tensor(image_to_tensor(rgb), model, scale, tile, overlap, progress)
    if gray:
        out = out.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    dtype = image.dtype if image.dtype in (np.uint8, np.uint16) else np.float32
    result = tensor_to_image(out, dtype=dtype)
    if gray:
        return result[..., 0]
    if alpha is not None:
        result = np.concatenate([result, imresize(alpha, scale=scale)[..., None].astype(dtype)], axis=2)
    return result
