"""KALDN demo: compare DSConv, linear DSConv and KDSConv super-resolution, fine-tune, and look inside.

    python app.py            # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT to change)

Runs offline on the bundled ``checkpoints/`` (the Hugging Face Hub is tried first and
skipped quickly when unreachable, see ``kaldn/hub.py``) and deploys unchanged as a
Hugging Face Space: the comparison runs under ``@spaces.GPU`` when the ``spaces``
package is importable, as a plain call otherwise.

All computation lives in :mod:`kaldn.compare` (no UI code there); this file only
wires it to Gradio components. Every event has an ``api_name``, so e.g.::

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    result = client.predict("hr", handle_file("examples/astronaut.png"), None, 4,
                            ["bicubic", "ldsconv", "kdsconv-det"], "auto", 64, api_name="/compare")

Settings (environment): ``KALDN_APP_MAX_PIXELS`` (largest upload, pixels; default 2048x2048),
``KALDN_APP_MAX_OUTPUT_PIXELS`` (largest output; default 2048x2048), ``KALDN_APP_MAX_FILE_SIZE``
(upload cap, default ``25mb``), ``KALDN_APP_CONCURRENCY`` (comparisons at a time, default 1),
``KALDN_APP_QUEUE_SIZE`` (default 32), ``KALDN_FINETUNE_MAX_ITERS`` (default 2000),
``KALDN_APP_MODEL_SOURCE`` (``auto``/``bundled``/``hub``, default ``auto``), plus those of
``kaldn.hub`` (``KALDN_CHECKPOINTS``, ``KALDN_HUB_REPO``, ...).
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from kaldn import compare as C
from kaldn.images import ImageError
from kaldn.train import TrainConfig

log = logging.getLogger("kaldn.app")

try:  # Hugging Face Spaces: GPU on demand (ZeroGPU); a no-op decorator elsewhere.
    import spaces

    def gpu(fn):
        return spaces.GPU(duration=C.env_int("KALDN_APP_GPU_SECONDS", 120))(fn)
except ImportError:  # running locally
    spaces = None

    def gpu(fn):
        return fn

ON_ZERO_GPU = bool(os.environ.get("SPACES_ZERO_GPU"))
ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.png"))
MAX_PIXELS = C.env_int("KALDN_APP_MAX_PIXELS", 2048 * 2048)
MAX_OUTPUT_PIXELS = C.env_int("KALDN_APP_MAX_OUTPUT_PIXELS", 2048 * 2048)
MAX_FILE_SIZE = os.environ.get("KALDN_APP_MAX_FILE_SIZE", "25mb")
OUT_ROOT = Path(tempfile.gettempdir()) / "kaldn-app"
KEEP_RUNS = 32

REGISTRY = C.FineTunedRegistry()
CACHE = C.ModelCache(source=os.environ.get("KALDN_APP_MODEL_SOURCE", "auto"))
FINETUNE = C.FineTuneManager(REGISTRY)

PAPERS = """
**Papers.** [001] *ALDNet*: "Attention-aware Linear Depthwise Convolution for Single Image Super-Resolution"
(linear depthwise convolution, attention computed from the depthwise filters, determinant descriptor).
[000] *KALDN / KDSConv*: kernel attention injected into the depthwise kernel, J. Vis. Commun. Image Represent. 96
(2023) 103930.
"""

INTRO = """
# KALDN: lightweight super-resolution with depthwise convolutions

Compare three building blocks of the same tiny RDN backbone, nothing else changed:
**DSConv** (depthwise → ReLU → pointwise → ReLU), **linear DSConv** (the "hasty" ReLU after the depthwise conv
removed) and **KDSConv** (linear DSConv whose depthwise kernels are re-weighted by a kernel attention pooled by
determinant, average or maximum), plus the **fixed 1.5x** control and MATLAB-compatible **bicubic**.
PSNR/SSIM as in the literature: Y channel, `scale` border pixels cropped, computed on the server's arrays.
"""

HOW_BLOCKS = """
### Three blocks, one backbone
* **DSConv** factorises a 3x3 convolution into a per-channel (depthwise) 3x3 and a 1x1 (pointwise) that mixes
  channels, each followed by a ReLU: about 9x fewer weights than a standard convolution.
* **Linear DSConv** (paper 001) drops the ReLU between the two: the depthwise output has not been mixed across
  channels yet, so zeroing its negative half throws information away ("hasty ReLU"). Same parameters, same cost.
* **KDSConv** (paper 000) keeps the linear block and scales each depthwise kernel by `1 + a_c`, where
  `a = sigmoid(W_I ReLU(W_D z))` and `z_c` pools kernel `W_c` to one number (**det**: its determinant, the rule of
  Sarrus for 3x3 as in paper 001 eq. 2; **avg**; **max**). `a` depends only on the weights, never on the image, so
  after training `(1 + a) W` is baked into the kernels: at inference a KDSConv costs exactly a linear DSConv (see
  "Params (fused)" in the Compare table). Raw determinants of trained 3x3 kernels are tiny (~0.01), which
  makes the gate output a constant 0.5; this implementation standardises `z` across channels first (shown as
  *descriptor* below) and offers the **fixed 1.5x** control to show what a learned attention adds over a constant
  scale.
"""

HOW_KERNELS = """
### The depthwise kernels of one layer, and the attention each gets
Each tile is one 3x3 depthwise kernel (blue negative, white zero, red positive; one colour scale per layer). Under it:
the channel and its scale `1 + a` (darker frame = more attention). The table lists each kernel's det / avg / max
pooled value, the normalised descriptor `z` the gate sees (for the layer's own pooling) and `a`. The gate report
summarises every KDSConv layer: a spread (`a std`) near zero would mean the attention learned nothing.
"""

HOW_RELU = """
### The hasty ReLU, on your image
DSConv applies a ReLU right after the depthwise convolution. Everything negative there is set to zero *before* the
pointwise convolution could combine it with other channels (paper 001, section III). Below: on the current LR input
(from the Compare tab, or the first example), the share of depthwise outputs that DSConv's ReLU zeroes, and, for the
linear DSConv model, the negative share it keeps. Energy is the share of the sum of squares.
"""


# --- helpers ----------------------------------------------------------------------------------------------

def _available() -> list[str]:
    from kaldn.hub import available_models
    try:
        return available_models()
    except Exception:  # noqa: BLE001 - a listing problem must not stop the app
        log.exception("listing checkpoints failed")
        return []


def _upload(payload: Any) -> Any:
    """What ``load_image`` takes, from an image payload (preprocess=False: a FileData dict), a path or None."""
    if payload is None or payload == "":
        return None
    if isinstance(payload, (str, os.PathLike)):
        return str(payload)
    if isinstance(payload, dict):
        if payload.get("path"):
            return payload["path"]
        url = payload.get("url") or ""
        if url.startswith("data:") and "," in url:
            try:
                return base64.b64decode(url.split(",", 1)[1])
            except ValueError:
                raise gr.Error("The uploaded image data could not be decoded.") from None
    raise gr.Error("The upload could not be read as a file.")


def _new_run_dir() -> Path:
    OUT_ROOT.mkdir(parents=True, exist_ok=True)
    runs = sorted((p for p in OUT_ROOT.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in runs[:-KEEP_RUNS]:
        shutil.rmtree(old, ignore_errors=True)
    path = OUT_ROOT / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def _user_error(exc: Exception) -> gr.Error:
    return gr.Error(str(exc), title="Cannot run this")


def _scale(value: Any) -> int:
    try:
        return C._check_scale(value)
    except C.CompareError as exc:
        raise _user_error(exc) from None


def _default_variants(scale: int, available: list[str]) -> list[str]:
    return [v for v in C.DEFAULT_VARIANTS if v == C.BICUBIC or f"{C.APP_BACKBONE}-{v}-x{scale}" in available]


def _slider_value(state: dict, left: str, right: str) -> tuple[str, str]:
    paths: dict = state["paths"]
    comparison: C.Comparison = state["comparison"]

    def path_of(key: str) -> str:
        if key in paths:
            return str(paths[key])
        if key == "lr":  # the LR input enlarged (nearest) to the output size, written on first use
            path = Path(state["dir"]) / f"lr-nearest-x{comparison.inputs.scale}.png"
            if not path.exists():
                from kaldn.images import save_png
                save_png(C.pair_image(comparison, "lr"), path)
            paths["lr-nearest"] = path
            return str(path)
        raise gr.Error(f"{C.variant_label(key, REGISTRY)} is not part of this comparison.")

    if key_ok := [k for k in (left, right) if k != "lr" and k not in paths]:
        raise gr.Error(f"Not part of this comparison: {', '.join(key_ok)}.")
    return path_of(left), path_of(right)


def _crops(state: dict, center: tuple[float, float] | None, size: int):
    comparison: C.Comparison = state["comparison"]
    crops, region = C.zoom_crops(comparison, center, int(size))
    state["region"] = region
    reference = comparison.inputs.gt if comparison.inputs.gt is not None else comparison.ok[-1].image
    picker = C.draw_region(reference, region)
    x0, y0, w, h = region
    return picker, [(img, cap) for img, cap in crops], x0 + w // 2, y0 + h // 2


def _table(headers: list[str], rows: list[list[Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=headers, dtype=object)


# --- Model zoo tab ----------------------------------------------------------------------------------------

ZOO_INTRO = """
Every bundled model, trained by this project with one budget per scale (same iterations, patch, batch,
seed and data for every variant), and its numbers by the evaluation protocol above (Y channel, border =
scale, MATLAB bicubic LR), as written by `python -m kaldn.evaluate --ship`. The budget is far below the
papers' DIV2K training: compare the rows with each other, not with published numbers. README's
"Results" has the same numbers with the seed-to-seed spread and what they say about each claim.
"""


def zoo(scale_filter: Any) -> pd.DataFrame:
    """The zoo table, all scales or one."""
    scale = None if scale_filter in (None, "", "all") else _scale(scale_filter)
    return _table(*C.zoo_table(scale=scale))


# --- Compare tab ------------------------------------------------------------------------------------------

@gpu
def run_compare(mode: str, image: Any, ground_truth: Any, scale: Any, variants: list[str] | None, device: str,
                crop_size: Any, progress=gr.Progress()):
    """Upscale with every chosen variant; returns outputs, crops, metrics and downloads."""
    scale = _scale(scale)
    mode = mode if mode in ("hr", "lr") else "hr"
    try:
        inputs = C.prepare_inputs(_upload(image), scale, mode, _upload(ground_truth) if mode == "lr" else None,
                                  max_pixels=MAX_PIXELS, max_output_pixels=MAX_OUTPUT_PIXELS)
    except (ImageError, C.CompareError) as exc:
        raise _user_error(exc) from None
    progress(0.0, desc="Loading models")
    try:
        comparison = C.run_comparison(inputs, variants or [], device=device or "auto", cache=CACHE,
                                      registry=REGISTRY, progress=lambda f, d: progress(f, desc=d))
    except C.CompareError as exc:
        raise _user_error(exc) from None
    if not comparison.ok:
        raise gr.Error("None of the chosen variants could run: "
                       + " ".join(r.message for r in comparison.results if r.message), title="Nothing to show")
    for r in comparison.results:
        if r.status != "ok":
            gr.Warning(f"{r.label}: {r.message}")
    if "CUDA" in " ".join(comparison.notes):
        gr.Warning(comparison.notes[0])

    run_dir = _new_run_dir()
    paths = C.save_outputs(comparison, run_dir)
    state = {"comparison": comparison, "paths": paths, "dir": str(run_dir), "region": None}
    left, right = C.default_pair(comparison)
    choices = C.pair_choices(comparison)
    picker, crops, cx, cy = _crops(state, None, crop_size or 64)
    headers, rows = C.metrics_table(comparison)

    lines = [f"**x{scale}** on **{comparison.device}**."] + inputs.notes + comparison.notes
    scored = [r for r in comparison.ok if r.psnr is not None and r.key != C.BICUBIC]
    bicubic = comparison.result(C.BICUBIC)
    if scored:
        best = max(scored, key=lambda r: r.psnr)
        gain = f" ({best.psnr - bicubic.psnr:+.2f} dB vs bicubic)" if bicubic is not None and bicubic.psnr else ""
        lines.append(f"Best PSNR: **{best.label}**, {best.psnr:.2f} dB{gain}.")
    unavailable = [f"{r.label} ({r.message})" for r in comparison.results if r.status != "ok"]
    if unavailable:
        lines.append("Not run: " + "; ".join(unavailable))
    files = [str(paths[k]) for k in paths if k not in ("lr-nearest",)]
    return (state, "\n\n".join(f"- {line}" for line in lines), _slider_value(state, left, right),
            gr.update(choices=choices, value=left), gr.update(choices=choices, value=right),
            picker, crops, _table(headers, rows), files, cx, cy)


def show_pair(state: dict | None, left: str, right: str):
    """The two chosen images in the slider."""
    if not state:
        raise gr.Error("Run a comparison first.")
    return _slider_value(state, left, right)


def select_region(state: dict | None, crop_size: Any, evt: gr.SelectData):
    """Zoom where the picker image was clicked (SelectData.index = [x, y] in image pixels)."""
    if not state:
        raise gr.Error("Run a comparison first.")
    x, y = evt.index[0], evt.index[1]
    return _crops(state, (x, y), crop_size or 64)


def zoom(state: dict | None, x: Any, y: Any, crop_size: Any):
    """Crops centred on (x, y) in output pixels, ``crop_size`` output pixels wide."""
    if not state:
        raise gr.Error("Run a comparison first.")
    center = None if x is None or y is None else (float(x), float(y))
    return _crops(state, center, crop_size or 64)


def set_mode(mode: str):
    """Relabel the upload for HR / LR mode and show the ground-truth upload in LR mode only."""
    if mode == "lr":
        return (gr.update(label="LR image (network input)"),
                gr.update(visible=True, label="Ground truth (optional; exactly the LR size x scale)"))
    return gr.update(label="HR image (ground truth)"), gr.update(visible=False, value=None)


def variant_choices(scale: Any, selected: list[str] | None):
    """Variant checkboxes for a scale: variants without a checkpoint at that scale are marked."""
    scale = _scale(scale)
    available = _available()
    choices = C.variant_choices(scale, available, REGISTRY)
    keys = {k for _, k in choices}
    value = [v for v in (selected or []) if v in keys] or _default_variants(scale, available)
    return gr.update(choices=choices, value=value)


# --- Fine-tune tab ----------------------------------------------------------------------------------------

def _base_choices() -> list[tuple[str, str]]:
    choices = []
    for name in _available():
        try:
            spec = C.parse_model_name(name)
        except ValueError:
            continue
        if spec.backbone == C.APP_BACKBONE:
            choices.append((f"{C.LABELS.get(spec.conv, spec.conv)} x{spec.scale} ({name})", name))
    choices += [(e.label, str(e.path)) for e in REGISTRY.items()]
    return choices


def _how_choices() -> list[tuple[str, str]]:
    names = [n for n in _available() if n.startswith(f"{C.APP_BACKBONE}-")]
    order = {"det": 0, "avg": 1, "max": 2}
    kds = sorted((n for n in names if "-kdsconv-" in n and "-fixed-" not in n),
                 key=lambda n: (-int(n.rsplit("-x", 1)[1] == "4"), order.get(n.split("-")[2], 9), n))
    rest = [n for n in names if n not in kds and "-conv-x" not in n]
    choices = [(n, n) for n in kds + rest]
    choices += [(e.label, str(e.path)) for e in REGISTRY.items()]
    return choices


def refresh_models(scale: Any, selected: list[str] | None, base: str | None, how: str | None):
    """Refresh every model list (after fine-tuning, or on page load)."""
    bases, hows = _base_choices(), _how_choices()
    base_value = base if base in {v for _, v in bases} else _default_base(bases)
    how_value = how if how in {v for _, v in hows} else (hows[0][1] if hows else None)
    return (variant_choices(scale, selected), gr.update(choices=bases, value=base_value),
            gr.update(choices=hows, value=how_value))


def _default_base(choices: list[tuple[str, str]]) -> str | None:
    values = [v for _, v in choices]
    for preferred in (f"{C.APP_BACKBONE}-kdsconv-det-x4", f"{C.APP_BACKBONE}-ldsconv-x4"):
        if preferred in values:
            return preferred
    return values[0] if values else None


def _curves(history: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    steps = [h for h in history if h["event"] == "step"]
    vals = [h for h in history if h["event"] == "validation"]
    loss = pd.DataFrame({"iteration": [h["iteration"] for h in steps], "loss": [h["loss"] for h in steps]})
    psnr = pd.DataFrame({"iteration": [h["iteration"] for h in vals], "PSNR (dB)": [h["val_psnr"] for h in vals]})
    return loss, psnr


def finetune(files: list[str] | None, use_examples: bool, base: str | None, iters: Any, lr: Any, batch: Any,
             patch: Any, request: gr.Request, progress=gr.Progress()):
    """Fine-tune ``base`` on the uploaded HR images; streams (status, loss curve, PSNR curve, downloads)."""
    images = list(files or []) + ([str(p) for p in EXAMPLES] if use_examples else [])
    if not base:
        raise gr.Error("Choose a base model (no bundled checkpoint found).")
    try:
        settings = C.FineTuneSettings(base=base, iters=int(iters), lr=float(lr), batch=int(batch),
                                      patch=int(patch), device="cpu" if ON_ZERO_GPU else "auto")
        job, notes = FINETUNE.start(images, settings, owner=getattr(request, "session_hash", None),
                                    max_pixels=MAX_PIXELS)
    except C.BusyError as exc:
        raise gr.Error(str(exc), title="Busy") from None
    except (ValueError, TypeError) as exc:  # CompareError, ImageError, bad numbers
        raise _user_error(exc) from None
    for note in notes[1:]:
        gr.Warning(note)
    history: list[dict] = []
    header = f"Fine-tuning **{base}** for {settings.iters} iterations (lr {settings.lr:g}, batch {settings.batch}, " \
             f"patch {settings.patch}). " + notes[0]
    started, last_yield = time.time(), 0.0
    try:
        yield header + "\n\nPreparing (measuring the base model first)...", *_curves(history), None
        for event in job.events():
            if event["event"] in ("step", "validation"):
                history.append(event)
            done = max([h["iteration"] for h in history], default=0)
            progress((done, settings.iters), desc="iterations", unit="it")
            if time.time() - last_yield < 1.0 and event["event"] != "validation":
                continue
            last_yield = time.time()
            vals = [h for h in history if h["event"] == "validation"]
            line = f"Iteration {done}/{settings.iters}, {time.time() - started:.0f} s"
            if vals:
                line += f"; validation PSNR {vals[-1]['val_psnr']:.2f} dB (before: {vals[0]['val_psnr']:.2f} dB)"
            yield header + "\n\n" + line, *_curves(history), None
    finally:
        if job.thread is not None and job.thread.is_alive():  # client went away: stop and wait
            job.stop.set()
            job.thread.join(timeout=60)
    if job.error:
        raise gr.Error(f"Fine-tuning failed: {job.error}")
    entry = FINETUNE.register(job)
    vals = [h for h in history if h["event"] == "validation"]
    status = "cancelled" if job.result is not None and job.result.status == "cancelled" else "finished"
    summary = f"{header}\n\n**{status.capitalize()}** after {job.result.iteration if job.result else 0} iterations " \
              f"in {time.time() - started:.0f} s."
    if len(vals) > 1:
        summary += f" Validation PSNR {vals[0]['val_psnr']:.2f} → best {max(v['val_psnr'] for v in vals):.2f} dB."
    downloads = None
    if entry is not None:
        summary += f" The model is now **{entry.label}** in the Compare and How-it-works model lists " \
                   f"(choose scale x{C.parse_model_name(entry.model).scale} there)."
        downloads = [str(entry.path / "model.safetensors"), str(entry.path / "config.json")]
    yield summary, *_curves(history), downloads


def cancel_finetune(request: gr.Request):
    """Stop your running fine-tuning job after the current iteration (its model is kept)."""
    if FINETUNE.cancel(owner=getattr(request, "session_hash", None)):
        gr.Info("Stopping after the current iteration; the model trained so far is kept.")
    elif FINETUNE.busy:
        gr.Warning("The running job belongs to another session; only its owner can cancel it.")
    else:
        gr.Info("No fine-tuning job is running.")


# --- How it works tab -------------------------------------------------------------------------------------

def _kernel_view(model_ref: str, layer: str | None):
    try:
        model = CACHE.raw(model_ref)
    except (FileNotFoundError, ValueError) as exc:
        raise gr.Error(f"Cannot load {model_ref}: {exc}") from None
    layers = C.kernel_layers(model)
    if not layers:
        raise gr.Error(f"{model_ref} has no depthwise layers to show.")
    layer = layer if layer in layers else layers[min(2, len(layers) - 1)]
    table = C.kernel_table(model, layer)
    grid = C.render_kernel_grid(table)
    gate_headers, gate = C.gate_rows(model)
    return layers, layer, grid, _table(C.KERNEL_HEADERS, C.kernel_rows(table)), _table(gate_headers, gate)


def kernel_model(model_ref: str | None, layer: str | None):
    """Choose a model: its layers, and the kernels of the current (or a default) layer, plus its gate report."""
    if not model_ref:
        raise gr.Error("No model with depthwise layers is available.")
    layers, layer, grid, rows, gate = _kernel_view(model_ref, layer)
    return gr.update(choices=layers, value=layer), grid, rows, gate


def kernels(model_ref: str | None, layer: str | None):
    """The depthwise kernels of one layer as heat maps, with det/avg/max pooled values and 1 + a."""
    if not model_ref:
        raise gr.Error("Choose a model first.")
    _, _, grid, rows, _ = _kernel_view(model_ref, layer)
    return grid, rows


def hasty_relu(state: dict | None, mode: str, image: Any, ground_truth: Any, scale: Any):
    """Share of depthwise outputs that DSConv's ReLU zeroes vs what linear DSConv keeps, on the current image."""
    scale = _scale(scale)
    if state and state.get("comparison") is not None and state["comparison"].inputs.scale == scale:
        lr, where = state["comparison"].inputs.lr, "the LR input of your last comparison"
    else:
        source = _upload(image)
        if source is None:
            if not EXAMPLES:
                raise gr.Error("Upload an image on the Compare tab first.")
            source, mode = str(EXAMPLES[0]), "hr"
            where = f"the example {EXAMPLES[0].name}"
        else:
            where = "the image on the Compare tab"
        try:
            lr = C.prepare_inputs(source, scale, mode if mode in ("hr", "lr") else "hr",
                                  max_pixels=MAX_PIXELS, max_output_pixels=MAX_OUTPUT_PIXELS).lr
        except (ImageError, C.CompareError) as exc:
            raise _user_error(exc) from None
    report = C.hasty_relu_report(lr, scale, CACHE)
    if not report["stats"]:
        raise gr.Error(f"No DSConv / linear DSConv checkpoint at x{scale}: " + ", ".join(report["missing"]))
    summary = f"On {where} (x{scale}):\n\n" + report["summary"]
    return (summary, report["maps"], _table(C.HASTY_HEADERS, report["rows"]),
            _table(C.HASTY_LAYER_HEADERS, report["per_layer"]))


# --- layout -----------------------------------------------------------------------------------------------

CSS = """
#kaldn-status ul { margin: 0; }
#kaldn-gallery .caption-label { font-size: 0.8rem; }
"""


def build_demo() -> gr.Blocks:
    """The whole app (queue configured); ``launch()`` it."""
    available = _available()
    scale0 = 4
    variant0 = C.variant_choices(scale0, available, REGISTRY)
    bases = _base_choices()
    hows = _how_choices()

    with gr.Blocks(title="KALDN super-resolution", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(INTRO)
        if not available:
            gr.Markdown("**No bundled checkpoint was found** (`checkpoints/`, or `KALDN_CHECKPOINTS`): only bicubic "
                        "can run until models are added or the Hub can be reached.")
        state = gr.State(None)

        with gr.Tab("Compare", id="compare"):
            with gr.Row():
                with gr.Column(scale=2, min_width=300):
                    mode = gr.Radio([("HR image (ground truth)", "hr"), ("LR image (+ optional ground truth)", "lr")],
                                    value="hr", label="What are you uploading?")
                    image = gr.Image(label="HR image (ground truth)", type="filepath",
                                     image_mode=None, format="png", sources=["upload", "clipboard"], height=280,
                                     elem_id="kaldn-input")
                    gt = gr.Image(label="Ground truth (optional; exactly the LR size x scale)", type="filepath",
                                  image_mode=None, format="png", sources=["upload", "clipboard"], height=200,
                                  visible=False, elem_id="kaldn-gt")
                    scale = gr.Radio([2, 3, 4], value=scale0, label="Scale")
                    variants = gr.CheckboxGroup(variant0, value=_default_variants(scale0, available),
                                                label="Variants", elem_id="kaldn-variants")
                    device = gr.Radio([("Auto", "auto"), ("CUDA", "cuda"), ("CPU", "cpu")], value="auto",
                                      label="Device")
                    run = gr.Button("Run comparison", variant="primary", elem_id="kaldn-run")
                    examples = gr.Examples([[str(p), "hr"] for p in EXAMPLES], inputs=[image, mode],
                                           label="Examples (HR; one click runs the comparison)",
                                           example_labels=[p.stem for p in EXAMPLES], cache_examples=False)
                with gr.Column(scale=5):
                    status = gr.Markdown("Upload an image (or click an example) and press **Run comparison**.",
                                         elem_id="kaldn-status")
                    with gr.Row():
                        left = gr.Dropdown(label="Slider: left", choices=[], interactive=True)
                        right = gr.Dropdown(label="Slider: right", choices=[], interactive=True)
                    slider = gr.ImageSlider(label="Side by side (drag the handle; fullscreen to zoom)", format="png",
                                            type="filepath", interactive=False, max_height=600,
                                            elem_id="kaldn-slider")
            table = gr.Dataframe(label="Metrics vs ground truth (PSNR/SSIM on Y, border = scale; time = upscaling only)",
                                 interactive=False, wrap=True, elem_id="kaldn-metrics",
                                 column_widths=["15%", "14%", "7%", "6%", "8%", "7%", "7%", "6%", "13%", "17%"])
            with gr.Row():
                with gr.Column(scale=2, min_width=280):
                    picker = gr.Image(label="Click to choose the zoom region", format="png", interactive=False,
                                      height=340, elem_id="kaldn-picker", buttons=["fullscreen"])
                    crop_size = gr.Slider(16, 256, value=64, step=4, label="Region size (output pixels)")
                    with gr.Row():
                        cx = gr.Number(label="Region centre x", precision=0, min_width=80)
                        cy = gr.Number(label="Region centre y", precision=0, min_width=80)
                with gr.Column(scale=5):
                    gallery = gr.Gallery(label="Zoomed crops, same region (nearest-neighbour enlargement)",
                                         columns=5, format="png", height="auto", object_fit="contain",
                                         elem_id="kaldn-gallery")
            files = gr.File(label="Downloads: lossless PNG outputs and metrics.csv", file_count="multiple",
                            interactive=False, height=260, elem_id="kaldn-files")

        with gr.Tab("Model zoo", id="zoo"):
            gr.Markdown(ZOO_INTRO)
            zoo_scale = gr.Radio([("All", "all"), ("x2", "2"), ("x3", "3"), ("x4", "4")], value="all",
                                 label="Scale")
            zoo_df = gr.Dataframe(zoo("all"), interactive=False, wrap=True, elem_id="kaldn-zoo",
                                  column_widths=["15%", "6%", "16%", "7%", "11%", "11%", "11%", "23%"],
                                  max_height=2400)  # every row rendered: no scrolling inside the table

        with gr.Tab("Fine-tune", id="finetune"):
            gr.Markdown("Fine-tune a bundled model on a few of your own HR images (LR patches are made with the "
                        "same MATLAB-compatible bicubic). One job at a time on this server; at most "
                        f"{FINETUNE.max_iters} iterations. The result appears in the Compare choices and can be "
                        "downloaded as safetensors.")
            with gr.Row():
                with gr.Column(scale=2, min_width=300):
                    ft_files = gr.File(label="HR training images", file_count="multiple", file_types=["image"],
                                       elem_id="kaldn-ft-files")
                    ft_examples = gr.Checkbox(label="Also train on the bundled example images", value=True)
                    ft_base = gr.Dropdown(bases, value=_default_base(bases), label="Base model")
                    ft_iters = gr.Slider(10, FINETUNE.max_iters, value=min(200, FINETUNE.max_iters), step=10,
                                         label="Iterations", elem_id="kaldn-ft-iters")
                    halve = "/".join(f"{100 * f:.0f}" for f in TrainConfig().lr_halve_at)
                    ft_lr = gr.Number(2e-4, label=f"Learning rate (Adam; halved at {halve}% of the run)")
                    with gr.Accordion("Advanced", open=False):
                        ft_batch = gr.Slider(1, 32, value=8, step=1, label="Batch size (patches)")
                        ft_patch = gr.Slider(16, 96, value=32, step=8, label="LR patch size (pixels)")
                    with gr.Row():
                        ft_start = gr.Button("Start fine-tuning", variant="primary", elem_id="kaldn-ft-start")
                        ft_cancel = gr.Button("Cancel", variant="stop", elem_id="kaldn-ft-cancel")
                with gr.Column(scale=3):
                    ft_status = gr.Markdown("Not started.", elem_id="kaldn-ft-status")
                    with gr.Row():
                        loss_plot = gr.LinePlot(pd.DataFrame({"iteration": [], "loss": []}), x="iteration", y="loss",
                                                title="Training loss (L1)", height=280)
                        psnr_plot = gr.LinePlot(pd.DataFrame({"iteration": [], "PSNR (dB)": []}), x="iteration",
                                                y="PSNR (dB)", title="Validation PSNR (dB)",
                                                height=280)
                    ft_download = gr.File(label="Fine-tuned model (model.safetensors + config.json)",
                                          file_count="multiple", interactive=False)

        with gr.Tab("How it works", id="how") as how_tab:
            gr.Markdown(HOW_BLOCKS)
            gr.Markdown(HOW_KERNELS)
            with gr.Row():
                how_model = gr.Dropdown(hows, value=hows[0][1] if hows else None, label="Model")
                how_layer = gr.Dropdown([], label="Layer (RDB block . layer)")
            kernel_img = gr.Image(label="Depthwise kernels", show_label=False, format="png", interactive=False,
                                  elem_id="kaldn-kernels", buttons=["download", "fullscreen"])
            with gr.Accordion("Per-kernel values", open=False):
                kernel_df = gr.Dataframe(interactive=False, max_height=360)
            gate_df = gr.Dataframe(label="Gate report (every KDSConv layer)", interactive=False, max_height=300)
            gr.Markdown(HOW_RELU)
            hasty_btn = gr.Button("Measure on the current image")
            hasty_md = gr.Markdown(elem_id="kaldn-hasty")
            hasty_gallery = gr.Gallery(label="Where the depthwise output is negative", columns=3, format="png",
                                       height="auto", object_fit="contain")
            hasty_df = gr.Dataframe(label="Whole model", interactive=False)
            with gr.Accordion("Per layer", open=False):
                hasty_layers = gr.Dataframe(interactive=False, max_height=360)
            gr.Markdown(PAPERS)

        # --- events ---
        mode.change(set_mode, [mode], [image, gt], api_name="set_mode")
        scale.change(variant_choices, [scale, variants], [variants], api_name="variant_choices")
        compare_inputs = [mode, image, gt, scale, variants, device, crop_size]
        compare_outputs = [state, status, slider, left, right, picker, gallery, table, files, cx, cy]
        run.click(run_compare, compare_inputs, compare_outputs, api_name="compare", preprocess=False,
                  concurrency_id="compute")
        examples.load_input_event.then(run_compare, compare_inputs, compare_outputs, api_name="compare_example",
                                       preprocess=False, concurrency_id="compute")
        gr.on([left.input, right.input], show_pair, [state, left, right], [slider], api_name="slider_pair")
        picker.select(select_region, [state, crop_size], [picker, gallery, cx, cy], api_name="select_region")
        gr.on([crop_size.release, cx.submit, cy.submit], zoom, [state, cx, cy, crop_size],
              [picker, gallery, cx, cy], api_name="zoom")

        zoo_scale.change(zoo, [zoo_scale], [zoo_df], api_name="zoo")

        train_event = ft_start.click(finetune, [ft_files, ft_examples, ft_base, ft_iters, ft_lr, ft_batch, ft_patch],
                                     [ft_status, loss_plot, psnr_plot, ft_download], api_name="finetune",
                                     concurrency_limit=None, concurrency_id="finetune")
        train_event.then(refresh_models, [scale, variants, ft_base, how_model], [variants, ft_base, how_model],
                         api_name="refresh_after_finetune")
        ft_cancel.click(cancel_finetune, None, None, api_name="cancel_finetune", queue=False)
        demo.load(refresh_models, [scale, variants, ft_base, how_model], [variants, ft_base, how_model],
                  api_name="refresh_models")

        how_model.change(kernel_model, [how_model, how_layer], [how_layer, kernel_img, kernel_df, gate_df],
                         api_name="kernel_model")
        how_layer.input(kernels, [how_model, how_layer], [kernel_img, kernel_df], api_name="kernels")
        hasty_inputs = [state, mode, image, gt, scale]
        hasty_outputs = [hasty_md, hasty_gallery, hasty_df, hasty_layers]
        hasty_btn.click(hasty_relu, hasty_inputs, hasty_outputs, api_name="hasty_relu", preprocess=False)
        how_tab.select(kernel_model, [how_model, how_layer], [how_layer, kernel_img, kernel_df, gate_df],
                       api_name="open_how_it_works").then(
            hasty_relu, hasty_inputs, hasty_outputs, api_name="hasty_relu_on_open", preprocess=False)

    demo.queue(default_concurrency_limit=C.env_int("KALDN_APP_CONCURRENCY", 1),
               max_size=C.env_int("KALDN_APP_QUEUE_SIZE", 32))
    return demo


def launch_kwargs() -> dict[str, Any]:
    """Everything ``launch()`` needs besides host/port (also used by the tests)."""
    return {
        "max_file_size": MAX_FILE_SIZE,
        "allowed_paths": [str(EXAMPLES_DIR)],
        "theme": gr.themes.Soft(),
        "css": CSS,
        "show_error": True,
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    port = os.environ.get("GRADIO_SERVER_PORT")
    build_demo().launch(server_name=os.environ.get("GRADIO_SERVER_NAME") or None,
                        server_port=int(port) if port else None, **launch_kwargs())
