"""kaldn: lightweight super-resolution with depthwise convolutions (DSConv, linear DSConv, KDSConv).

Data flows one way: image -> tensor -> model -> tensor -> image -> metrics.

    from kaldn import load_image, load_model, prepare_model, upscale, psnr_y
    model = prepare_model(load_model("tiny-kdsconv-det-x4"))   # fused, channels_last, CPU or CUDA
    sr = upscale(load_image("photo.png"), model)

Every architecture and convolution variant is one entry of the registry (``kaldn.registry``):
``register_architecture`` / ``register_conv``; ``model_names()`` and ``variants()`` list what is registered.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .hub import available_models, load_model
from .images import ImageError, load_image, save_png
from .inference import prepare_model, upscale
from .layers import DSConv, FixedScaleDSConv, KDSConv, LinearDSConv, StandardConv, fuse
from .metrics import psnr_y, ssim_y
from .models import create_model, model_names, parse_model_name, variants
from .registry import register_architecture, register_conv
from .resize import imresize

__all__ = ["DSConv", "FixedScaleDSConv", "ImageError", "KDSConv", "LinearDSConv", "StandardConv",
           "available_models", "create_model", "fuse", "imresize", "load_checkpoint", "load_image", "load_model",
           "model_names", "parse_model_name", "prepare_model", "psnr_y", "register_architecture", "register_conv",
           "save_checkpoint", "save_png", "ssim_y", "upscale", "variants"]
