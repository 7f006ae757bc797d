"""KALDN demo: compare DSConv, linear DSConv and KDSConv super-resolution, fine-tune, and look inside.

    python app.py            # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT to change)

Runs offline on the bundled checkpoints (``KALDN_APP_MODEL_SOURCE=auto`` tries the Hugging Face Hub first and
falls back to them, see ``kaldn/hub.py``) and deploys unchanged as a Hugging Face Space: the comparison's compute
(``upscale_on_device``) runs under ``@spaces.GPU`` when the ``spaces`` package is importable, as a plain call
otherwise.

This file is the layout and the event wiring, one function per tab; every handler calls the library
(``kaldn.inputs``, ``kaldn.choices``, ``kaldn.comparison``, ``kaldn.runs``, ``kaldn.results``, ``kaldn.finetune``, ``kaldn.inspection``, ``kaldn.gates``) and
shows what it returns. Every event has an ``api_name``, so e.g.::

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    result = client.predict("hr", handle_file("examples/astronaut.png"), None, 4,
                            ["bicubic", "ldsconv", "kdsconv-det"], "auto", 64, api_name="/compare")

Settings come from the environment (``KALDN_APP_MAX_PIXELS``, ``KALDN_FINETUNE_MAX_ITERS``, ...): see
``kaldn/settings.py``, plus those of ``kaldn.hub`` (``KALDN_CHECKPOINTS``, ``KALDN_HUB_REPO``, ...).
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
import tempfile
import threading
import time
import weakref
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pandas as pd
import torch
from gradio.utils import get_upload_folder
from gradio_client.utils import is_file_obj_with_meta
from starlette.middleware import Middleware

from kaldn.admission import (BodyLimit, CheckedBodies, SessionSlots, SingleFlight, client_key, held_upload,
                             short_of_disk)
from kaldn.cache import ModelCache
from kaldn.choices import ResolvedVariant, default_variants, runnable_selection, ticked
from kaldn.choices import variant_choices as compare_choices
from kaldn.comparison import (METRIC_HEADERS, admitted_variants, check_device, compare_resolved, default_pair,
                              metrics_table, pair_choices)
from kaldn.convert import published_architectures
from kaldn.errors import BusyError, UserError
from kaldn.finetune import (BATCH_RANGE, LR_RANGE, PATCH_RANGE, FineTuneManager, FineTuneSettings, base_choices,
                            default_base)
from kaldn.gates import NEAR_CONSTANT_STD
from kaldn.hub import available_models
from kaldn.images import ImageError
from kaldn.inputs import Inputs, check_inputs, measurement_input, prepare_inputs
from kaldn.inspection import (GATE_HEADERS, HASTY_HEADERS, HASTY_LAYER_HEADERS, KERNEL_HEADERS, Z_A_HEADERS,
                              depthwise_savings, gate_sizes, hasty_outcome, hasty_relu_report, inspection_choices,
                              kernel_view)
from kaldn.models import check_scale, model_label, parse_model_name, scales, variant_of
from kaldn.results import (GLANCE_NOTE, PUBLISHED_SOURCE, claims, claims_table, featured_budget, load_results,
                           psnr_cost_points, timing_note, training_curves, zoo_table)
from kaldn.runs import DEFAULT_REGION_SIZE, REGION_SIZES, ComparisonRun, RunStore, region_size
from kaldn.session_models import SessionModels, import_checkpoint, upload_archs
from kaldn.settings import AppSettings
from kaldn.train import TrainConfig
from kaldn.workdirs import delete_abandoned_uploads, delete_expired_files, instance_root

SETTINGS = AppSettings.from_env()
log = logging.getLogger("kaldn.app")

try:  # Hugging Face Spaces: GPU on demand (ZeroGPU); a no-op decorator elsewhere.
    import spaces

    def gpu(fn):
        return spaces.GPU(duration=SETTINGS.gpu_seconds)(fn)
except ImportError:  # running locally
    spaces = None

    def gpu(fn):
        return fn

ON_ZERO_GPU = bool(os.environ.get("SPACES_ZERO_GPU"))
ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.png"))
OUT_ROOT = Path(tempfile.gettempdir()) / "kaldn-app"  # this process works in OUT_ROOT/<pid>-<token>

CACHE = ModelCache(source=SETTINGS.model_source)
SERVER_PID = os.getpid()
WORKER_CACHES: dict[int, ModelCache] = {}  # by process id: a forked GPU worker's own (see process_cache)
# Fine-tuned and uploaded models, per session; unused ones go after the session TTL (raw API clients never "end").
SESSION_MODELS = SessionModels(max_idle_s=SETTINGS.session_ttl, on_forget=CACHE.forget)
FINETUNE = FineTuneManager(SESSION_MODELS, max_iters=SETTINGS.finetune_max_iters,
                           time_budget_s=SETTINGS.finetune_time_budget_s, max_images=SETTINGS.finetune_max_images,
                           max_total_pixels=SETTINGS.finetune_max_total_pixels,
                           max_batch_pixels=SETTINGS.finetune_max_batch_pixels, model_source=SETTINGS.model_source)
# Every session's last comparison; a run lives as long as the session's state (+ a minute), never longer.
RUNS = RunStore(instance_root(OUT_ROOT), memory_bytes=SETTINGS.run_memory, max_age_s=SETTINGS.session_ttl + 60)
_DEMOS: "weakref.WeakSet[gr.Blocks]" = weakref.WeakSet()  # the built apps, whose queues SLOTS looks into
SWEEP_INTERVAL_S = 60.0
# Uploads (and the images views saved) are deleted an hour after they arrived, checked with every sweep: the
# app's sweep, not Gradio's delete_cache, which ended for good when an upload arrived during it.
UPLOAD_MAX_AGE_S = 3600.0


def sweep_expired() -> None:
    """Delete expired runs, unused session models and old files of Gradio's cache now. Saving a run or adding a
    model sweeps too, but a quiet server does neither, and a session whose state Gradio evicts never calls its
    delete callback."""
    RUNS.prune()
    SESSION_MODELS.expire()
    sweep_cache(UPLOAD_MAX_AGE_S)
    delete_abandoned_uploads(get_upload_folder(), UPLOAD_MAX_AGE_S)


def sweep_cache(max_age_s: float) -> None:
    """Delete the files the built apps put in Gradio's cache over ``max_age_s`` ago, but the examples. Nothing at
    exit (Gradio's delete_cache deleted all): another process sharing the folder may serve the same files, which
    Gradio names by their content."""
    for demo in list(_DEMOS):
        keep = {f for block in demo.blocks.values() for f in getattr(block, "keep_in_cache", ())}
        for files in list(demo.temp_file_sets):
            delete_expired_files(files, max_age_s, keep)


SWEEP_NOW = threading.Event()  # set: sweep at once (tests), else every SWEEP_INTERVAL_S


def _sweep_forever() -> None:
    while True:
        SWEEP_NOW.wait(SWEEP_INTERVAL_S)
        SWEEP_NOW.clear()
        try:
            sweep_expired()
        except Exception:  # a sweep must never stop the sweeping
            log.exception("sweeping expired runs and models failed")


_SWEEPER = threading.Thread(target=_sweep_forever, name="kaldn-sweeper", daemon=True)


def queued_events(session: str) -> int:
    """Events of ``session`` in the queue of any built app, waiting or running (Gradio's queue internals,
    read only; 0 where they are not there)."""
    count = 0
    for demo in list(_DEMOS):
        queue = getattr(demo, "_queue", None)
        for events in list(getattr(queue, "event_queue_per_concurrency_id", {}).values()):
            count += sum(1 for e in list(getattr(events, "queue", [])) if e.session_hash == session)
        for jobs in list(getattr(queue, "active_jobs", []) or []):
            count += sum(1 for e in jobs or [] if e.session_hash == session)
    return count


SLOTS = SessionSlots(limit=SETTINGS.session_jobs, pending=queued_events, client_limit=SETTINGS.client_jobs)
# Views outside the queue: one per session, KALDN_APP_VIEWS at once, half of them per client address.
VIEWS = SingleFlight(limit=SETTINGS.views)
# Lists and tables (a mode's labels, model lists, the zoo, the results plots): cheap, also outside the queue so
# a flood of them cannot fill it; a few per session at once (a page load asks for several).
LISTS = SingleFlight(limit=16, per_session=3)
# Queued jobs wait in three lines: "compute" (comparisons, conversions, the hasty-ReLU measurement:
# KALDN_APP_CONCURRENCY at once), "finetune" (its manager runs one job at a time) and CHECKS, one at a time: input
# checks decode the upload but run no model (<= ~94 MiB and 0.3 s at the caps, benchmarks.view_memory), so a
# verdict on an upload does not wait behind other users' comparisons.
CHECKS = "checks"

PAPERS = """
**Papers.** [001] *ALDNet*: "Attention-aware Linear Depthwise Convolution for Single Image Super-Resolution"
(linear depthwise convolution, attention computed from the depthwise filters, determinant descriptor).
[000] *KALDN / KDSConv*: kernel attention injected into the depthwise kernel, J. Vis. Commun. Image Represent. 96
(2023) 103930.
"""

INTRO = """
# KALDN: lightweight super-resolution with depthwise convolutions

Compare three building blocks in the same tiny RDN (residual dense network) backbone, nothing else changed between
them:
**DSConv** (depthwise → ReLU → pointwise → ReLU), **linear DSConv** (the "hasty" ReLU after the depthwise conv
removed) and **KDSConv** (linear DSConv whose depthwise kernels are re-weighted by an attention computed from
each kernel's determinant, average or maximum), plus the **fixed 1.5x** control (the same block with every kernel
scaled by a constant 1.5 instead of a learned attention) and MATLAB-compatible **bicubic**.
{featured}networks the papers compare with (LESRCNN, FDIWN, SCNet-T), trained by this project under the x4 tiny
zoo's budget, can be added.
PSNR (dB) and SSIM, higher is better, as in the literature: Y channel, `scale` border pixels cropped, computed on
the server's arrays.
"""


def _featured_intro(budget: dict | None) -> str:
    # Numbers from the bundled config, so shipping another checkpoint cannot leave this sentence stale.
    if budget is None:
        return "The "
    times = f", {budget['times_base']:.2g}x the tiny model's iterations" if budget["times_base"] else ""
    return (f"**{model_label(budget['model'])}** is the same block in a larger RDN trained longer (checkpoint at "
            f"{budget['iterations_done']:,} of a {budget['iterations']:,}-iteration run{times}, LR patch "
            f"{budget['patch']}{', averaged weights' if budget['ema'] else ''}): the best model here, ticked by "
            "default;\nthe ")


def _featured_zoo(budget: dict | None) -> str:
    if budget is None:
        return ""
    backbone = parse_model_name(budget["model"]).backbone
    return (f" **{backbone.capitalize()}** (the `{backbone}-…` rows) puts the same blocks in a larger RDN "
            f"(G0 = {budget['num_features']}, G = {budget['growth']}, {budget['num_blocks']} blocks of "
            f"{budget['num_layers']} layers) trained longer (runs of {budget['iterations']:,} iterations, LR patch "
            f"{budget['patch']}{', an average of the weights' if budget['ema'] else ''}; each row's checkpoint is "
            "the one validation chose, in its Budget cell) under the held-out recipe: what a block reaches with more "
            f"capacity and time, compared only with other `{backbone}` rows"
            + (" (none is shipped yet, so for now it shows what capacity and training give, not which block is "
               "better)." if not budget["same_backbone"] else "."))


HOW_BLOCKS = """
### Three blocks, one backbone
* **DSConv** factorises a 3x3 convolution into a per-channel (depthwise) 3x3 and a 1x1 (pointwise) that mixes
  channels, each followed by a ReLU. A layer with C channels in and G out keeps C (9 + G) of the convolution's
  9 C G weights: 9G / (9 + G) times fewer, **{per_layer:.1f}x** at this tiny model's G = {growth}. The whole tiny
  model has **{model_ratio:.1f}x** fewer ({dsconv_params:,} against {conv_params:,}: the convolutions outside the
  dense layers stay standard: the two shallow-feature convolutions, each block's 1x1 fusion, the global fusion
  and the upsampler).
* **Linear DSConv** (paper 001, section II.A) drops the ReLU between the two: the depthwise output has not been
  mixed across channels yet, so zeroing its negative half may throw away what the pointwise conv would have
  combined ("hasty ReLU"). Same parameters, same cost.
* **KDSConv** (paper 000: "kernel attention injection" into the depthwise kernel) keeps the linear block and scales
  each depthwise kernel `W_c` by `1 + a_c` (the residual form of paper 001's eqs. 5-6), where
  `a = sigmoid(W_I ReLU(W_D z))`: `p_c` pools kernel `W_c` to one number (**det**: its determinant, by the rule
  of Sarrus as written after paper 001's eq. 2; **avg**; **max**, the largest weight) and the *descriptor* `z` is
  what the gate reads: the papers feed `z = p`, this implementation standardises it (last point below). Paper 001
  writes the gate with biases (eq. 3) and scales the depthwise *output*, `(1 + r_c) f_c` (eqs. 4-6); scaling the kernel is the
  same except that the depthwise bias is not scaled. Here the gate is bias-free, reduction r = {reductions}:
  for a layer of C channels `W_D` maps C numbers to C / r and `W_I` maps them back to C (the tiny model's first
  layer, C = {first_channels}, has {first_hidden} hidden units). Each `a_c` depends on every kernel's `z` (the
  gate's first layer mixes them), not on `z_c` alone.
* **After training a KDSConv *is* a linear DSConv.** `a` depends only on the weights, never on the image, so
  `(1 + a) W` is baked into the kernels (see "Params (fused)" in the Compare table): it cannot compute anything a
  linear DSConv cannot. Whatever it gains comes from *how it trains*: the kernel it applies starts about 1.5x
  larger and its weights move at another effective rate. The **fixed 1.5x** control (`W' = 1.5 W`, no gate)
  isolates that part: the gap between KDSConv and the control is what the learned attention adds.
* Raw determinants of this project's trained 3x3 kernels are tiny (about 0.01), so a gate fed raw determinants
  (`z = p`) sees almost 0 and gives about sigmoid(0) = 0.5 to every channel: the fixed 1.5x control again (with the
  paper's biases, a constant per channel instead, which the kernels absorb just the same). This implementation
  standardises the pooled values across a layer's channels first: `z = (p - mean p) / std p`.
"""


def how_blocks() -> str:
    """HOW_BLOCKS with its numbers from the registry's models."""
    return HOW_BLOCKS.format(**depthwise_savings(), **gate_sizes())


HOW_DET = """
### What a determinant says about a 3x3 kernel
The determinant sums products of three weights, one from each row and each column (the three "diagonals" minus
the three anti-diagonals). So:
* **Every separable kernel has det 0**: an outer product of two 1-D kernels (box blur, Gaussian, Sobel) has rank 1.
  So does a kernel with a zero row or column, and a kernel whose four corners are 0 (a plus shape, such as a
  Laplacian or a sharpening kernel) whatever its centre. Many classic filters look alike to det.
* **Mirroring flips its sign**: swapping the left and right columns (or the top and bottom rows) negates det, so
  a kernel and its mirror image get opposite pooled values although they do the same job mirrored.
* **It scales with the cube of the weights**: weights around 0.2 give det around 0.01, which is why raw
  determinants feed the gate almost nothing.
* Transposing keeps det; a 90° rotation flips its sign (a transpose and a mirror).
* The other poolings read other things: **avg** is the kernel's sum / 9, proportional to its response to a flat patch (0 for
  any edge or high-pass kernel whose weights sum to zero); **max** is its single largest weight (signed).
* Worked example: `[[1, 0, 0], [0, 2, 0], [0, 0, 3]]` has det 1·2·3 = 6; its mirror `[[0, 0, 1], [0, 2, 0],
  [3, 0, 0]]` has det -6; `[[0, 1, 0], [1, -4, 1], [0, 1, 0]]` (a Laplacian) has det 0 (and avg 0).
The per-kernel table below gives det, avg and max for every kernel of a trained layer: look for near-zero dets.
"""

HOW_KERNELS = """
### The depthwise kernels of one layer, and the attention each gets
Each tile is one stored 3x3 depthwise kernel `W_c` (blue negative, white zero, red positive; one colour scale per
layer); the model applies `(1 + a_c) W_c`. Under it: the channel and its scale `1 + a_c`; the frame is darker the
larger `a_c` (white frame: 1 + a = 1, black: 2). The table lists each kernel's det / avg / max pooled value, the
normalised descriptor `z` the gate sees (for the layer's own pooling) and `a`. The gate report summarises every
KDSConv layer: how widely `a` spreads across channels (`a std`: about 0.05 for an untrained gate, about 0.3 for
the shipped trained ones; under {near_constant} the gate is **near-constant**, about one scale for every kernel;
exactly 0 is a **dead** gate, every gate ReLU off and a = 0.5) and `corr(z, a)`, whether kernels with a larger descriptor got
more attention (+1), less (-1) or neither (near 0); `median |pooled|` is the layer's typical raw det / avg / max
before normalisation (a det near 0.01 is why raw determinants starve the gate). The tiles' frames are thin: read
`1 + a` under each tile. A gate that spreads `a` is not thereby a useful one: `corr(z, a)` near 0 means the
attention does not follow the descriptor, and whether the learned attention beats the fixed 1.5x control at all
is on the Results tab.

**See the raw-determinant gate yourself** (the papers feed raw determinants to the gate; the shipped models
standardise them): with a folder of your own photos, train a few hundred iterations with `python -m kaldn train
--model tiny-kdsconv-det-x4 --descriptor-norm none --data PHOTOS --out raw-det --iters 300`, and the same with
`--descriptor-norm standardize --out std-det`; upload each `best/model.safetensors` under "Compare with your own
checkpoint" on the Compare tab and choose it here. The raw-determinant gates are near-constant (`a std` far under
{near_constant}) from the start: the determinants of freshly initialised kernels are already near 0, so the gate
begins flat and a short run does not move it, while the standardised gates spread `a` from the first iteration
(`python -m benchmarks.gate_census raw-det std-det` prints both).
"""

HOW_RELU = """
### The hasty ReLU, on your image
DSConv applies a ReLU right after the depthwise convolution. Everything negative there is set to zero *before* the
pointwise convolution could combine it with other channels (paper 001, section II.A). Below: on the current LR input
(from the Compare tab, or the first example), the share of depthwise outputs that DSConv's ReLU zeroes, and, for the
linear DSConv model, the negative share it keeps. Energy is the share of the sum of squares. What to look for: how
far apart the two maps' shares are, and whether the negative share is higher on edges and texture than on flat
areas.
Read it with care: DSConv was *trained* with that ReLU, so its weights have adapted to it (what it zeroes is not
necessarily information it needed), and the two models are trained separately, so their maps differ for more reasons
than the ReLU. Whether removing it helps is a question for PSNR: see below and the Results tab.
For the PSNR line on one image as well: on the Compare tab, run a comparison with a ground truth (an HR upload or
an example) and both DSConv and Linear DSConv ticked, then press **Measure** here; to see where their outputs
differ, put DSConv and Linear DSConv on the two sides of the Compare tab's slider.
"""

HOW_EVIDENCE = """
### What the papers found, and what this project measured
**Paper 001** (full DIV2K training, x4; its Tables I-III; its DW-RDN is DSConv here, LDW-RDN linear DSConv and
ALD-RDN the attention block, written with biases and scaling the output): removing the hasty ReLU gained
**+0.07 dB** on Set5, **+0.01 dB** on Set14 and **+0.08 dB** on Urban100 (DW-RDN 32.10 / 28.59 / 26.06 against
LDW-RDN 32.17 / 28.60 / 26.14); the attention then added **+0.01**, **+0.02** and **+0.09 dB** (ALD-RDN 32.18 / 28.62 / 26.23); among
poolings, det had the *lowest* PSNR on Set5 and Set14 (Set5: det 32.18, avg 32.20, max 32.23) and the best or tied
SSIM on every set but Set5. On Set5 and Set14 the effects are hundredths of a dB, larger on Urban100; the
paper reports no seed spread.
**Paper 000** reports that KDSConv "significantly outperforms" DSConv (its abstract).

**This project** (its models at x4, Set5, compared only within one training budget; margins beside the measured
seed-to-seed noise, from `results/x4.json`):
"""


ZOO_INTRO = """
### Every model this project trained, and how it was measured
**Equal budgets.** Per scale, every variant is the same tiny RDN backbone with only the convolution changed, trained
with the same iterations, patch, batch, learning-rate schedule, data (80 SUN/Hays images) and seed; a second seed
of some variants (Seed 1; weights not shipped, their numbers are kept) shows how much a rerun alone moves PSNR.
The budget is far below the papers' DIV2K training: compare the rows with each other, not with published numbers
(those are on the Results tab). **Peers** (when listed) are the seed papers' architectures,
trained by this project under the x4 zoo's iterations, batch, patch, schedule and seed, with bf16 autocast and 72 of
the 80 images (8 held out to choose the checkpoint, where the first tiny zoo chose on BSD68). KDSConv (det) was
trained again under exactly that recipe (the row validated on held-out images; its weights are not shipped), and
the Results tab compares the peers with that row only.{featured}

**Protocol** (as in the papers): the HR test image is cropped to a multiple of the scale, the LR input is made
with MATLAB-compatible bicubic, and PSNR / SSIM are computed on the Y channel (ITU-R BT.601) of 8-bit outputs
with `scale` pixels cropped from every border; each cell is the mean over Set5, Set14 or BSD68. BSD68 is not the
papers' B100 (a different, 68-image set): its column has no published counterpart.

**Columns.** *Params*: trained parameters; *Params (fused)*: after KDSConv's weight-only attention is baked into
the kernels, what inference costs (KDSConv = linear DSConv). *MACs*: multiply-adds of one forward pass on a
256x256 input. *CPU ms*: median of 5 warm runs on a 256x256 input on this project's shared CPU; models with the
same MACs differ by up to 2x here (see the table), which is the machine's noise, so compare MACs for cost.
Bicubic is the floor.
Written by `python -m kaldn.evaluate` (`results/x{scale}.json`).
"""

RESULTS_INTRO = """
### What the equal-budget comparison says
Each claim checked on this project's models, the papers' (linear DSConv beats DSConv; KDSConv beats both) and
this project's own controls (the fixed 1.5x scale; the peers at an equal budget): the PSNR margin (mean over the seeds both sides were
trained with) next to the largest seed-to-seed spread. A margin inside that spread is a tie: a rerun with another
seed moves PSNR that much by itself.
"""

CURVES_NOTE = """
Validation PSNR during training (held-out images), per bundled model, read from the `log.jsonl` shipped beside each
checkpoint in `checkpoints/<model>/`.
"""

def _mp(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP"


UPLOAD_PROMPT = (f"Upload an image (or click an example) and press **Run comparison**. On this server: images up "
                 f"to {_mp(SETTINGS.max_pixels)} ({math.isqrt(SETTINGS.max_pixels)}x{math.isqrt(SETTINGS.max_pixels)}), "
                 f"outputs up to {_mp(SETTINGS.max_output_pixels)}: crop a larger photo first.")


def cost_note(scale: int) -> str:
    """What the PSNR-against-cost plots show at ``scale``."""
    text = (f"Set5 x{scale} PSNR against cost, every evaluated model (both seeds). CPU time is one 256x256 input "
            "timed by `kaldn.evaluate`; a model evaluated more than once on one machine shows its least time there (a "
            "run timed while the machine was busy reads high); README's speed table times the models side by side in one run "
            "(`python -m benchmarks.speed`).")
    if scale != 4:
        return text + (f" The published references used here (DESIGN.md) are x4 Set5 / Set14 only, so there are no "
                       f"published points at x{scale} (LESRCNN's paper also reports x2 / x3, on Urban100, which is "
                       "not evaluated here).")
    return text + (f" **Published** points are the papers' numbers (source: {PUBLISHED_SOURCE}); on the CPU-time "
                   "plot only LESRCNN and FDIWN have a time: their released models measured on this CPU by an "
                   "independent harness (DESIGN.md, 2 threads), so compare them with each other: the same LESRCNN "
                   "network reads slower in this project's own timing. The references used here give no whole-model "
                   "parameter counts (LESRCNN's paper gives 516K, not tied to a scale), so the parameter plot has "
                   "this project's models only. Hover a point for its name.")


# --- helpers ----------------------------------------------------------------------------------------------

def titled(title: str, message: str) -> dict:
    """A pop-up's title and message. Gradio 6 groups pop-ups by level and heads the group with the level
    ("Error", "Warning"), so the title also leads the message, where the user sees it."""
    return {"message": f"{title}: {message}", "title": title}


def shows_user_errors(fn):
    """Turn the library's user-facing errors into Gradio error pop-ups, logged as one line (other exceptions
    keep their traceback)."""
    def to_gradio(exc: Exception) -> gr.Error:
        log.info("%s refused: %s", fn.__name__, exc)
        return gr.Error(**titled("Busy" if isinstance(exc, BusyError) else "Cannot run this", str(exc)),
                        print_exception=False)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except (UserError, ImageError, BusyError) as exc:
                raise to_gradio(exc) from None
        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (UserError, ImageError, BusyError) as exc:
            raise to_gradio(exc) from None
    return call


def table(headers: list[str], rows: list[list[Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=headers, dtype=object)


def session_of(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None) or None


# With FORWARDED_ALLOW_IPS=* uvicorn takes the leftmost X-Forwarded-For entry, which the client wrote.
_FORGEABLE = os.environ.get("FORWARDED_ALLOW_IPS", "").strip() == "*"
if _FORGEABLE:
    log.warning("FORWARDED_ALLOW_IPS=* lets clients choose their address: per-address bounds are off; name the "
                "proxy's addresses or network instead")
_proxy_warned = False


def client_of(request: gr.Request | None) -> str | None:
    """The client address per-client bounds count by (None: not one client's, or the bounds are off)."""
    global _proxy_warned
    if not SETTINGS.client_jobs or _FORGEABLE:
        return None
    host = getattr(getattr(request, "client", None), "host", None)
    client = client_key(host)
    if client is None and host and not _proxy_warned and (getattr(request, "headers", None) or {}).get("x-forwarded-for"):
        _proxy_warned = True  # a non-global peer forwarding for others: a proxy uvicorn does not trust
        log.warning("requests come through a proxy at %s that uvicorn does not trust: per-address bounds are off; "
                    "name it in FORWARDED_ALLOW_IPS (README, \"Hosting safely\")", host)
    return client


def need_run(run_id: str | None, request: gr.Request | None) -> ComparisonRun:
    """The session's last comparison (kept on the server; the session's state holds only its id)."""
    run = RUNS.get(run_id, session_of(request))
    if run is None:
        raise gr.Error("Run a comparison first (results are kept for "
                       f"{SETTINGS.session_ttl // 60} minutes).", print_exception=False)
    return run


def drop_run(run_id: str | None) -> None:
    """The session's state expired or the session ended: its run's files go."""
    RUNS.drop(run_id)


def uploaded(payload: Any, what: str, kind: str = "image file") -> tuple[str, str] | None:
    """(path, original file name) of a file Gradio received for this request; None for no file.

    Only Gradio's own file payloads are accepted (``meta`` = FileData, which Gradio checks lies in its
    upload folder before the handler runs), and the path is checked again here: a client-chosen path,
    a ``data:`` URL or anything else is refused with one message that says nothing about the server.
    """
    if payload is None or payload == "":
        return None
    refused = UserError(f"{what} must be an uploaded {kind} (the page's upload, or gradio_client's "
                        "handle_file); other forms are not accepted.")
    if not (isinstance(payload, dict) and is_file_obj_with_meta(payload)):
        raise refused
    path = Path(os.path.abspath(payload["path"]))
    if not held_upload(str(path), get_upload_folder()):  # also a folder or an expired upload: the same refusal
        raise refused
    name = payload.get("orig_name") if isinstance(payload.get("orig_name"), str) else None
    return str(path), name or path.name


def compare_uploads(mode: str, image: Any, ground_truth: Any) -> dict[str, Any]:
    """The Compare tab's uploads as the input checks take them (mode, files, original names, this server's
    caps); the ground truth is read in LR mode only."""
    mode = mode if mode in ("hr", "lr") else "hr"
    image = uploaded(image, "The image")
    gt = uploaded(ground_truth, "The ground truth") if mode == "lr" else None
    return {"image": image and image[0], "mode": mode, "ground_truth": gt and gt[0], "image_name": image and image[1],
            "gt_name": gt and gt[1], "max_pixels": SETTINGS.max_pixels, "max_output_pixels": SETTINGS.max_output_pixels}


def _request_in(args: tuple, kwargs: dict) -> gr.Request | None:
    return next((a for a in (*args, *kwargs.values()) if isinstance(a, gr.Request)), None)


def outside_queue(limiter: SingleFlight, refusal: str, skip: int | None = None, writes: bool = False):
    """For a handler that runs outside the queue (``queue=False``): bounded by ``limiter`` per session and in
    all, extra calls refused at once with ``refusal`` (or, given ``skip``, silently: its outputs unchanged).
    ``writes``: its images are saved to disk (Gradio's cache), so it is refused while the disk is short."""
    def wrap(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            if writes:
                need_disk()
            request = _request_in(args, kwargs)
            session, client = session_of(request), client_of(request)
            if not limiter.enter(session, client):
                if skip is not None:
                    return tuple(gr.skip() for _ in range(skip))
                raise gr.Error(**titled("One at a time", refusal), print_exception=False)
            try:
                return fn(*args, **kwargs)
            finally:
                limiter.leave(session, client)
        return call
    return wrap


# A view (slider, zoom, kernels): one per session at a time and at most VIEWS.limit in all.
quick_view = outside_queue(VIEWS, "a view of yours is still being drawn, or the server is busy: try again in a "
                                  "moment.", writes=True)
light_call = outside_queue(LISTS, "the server is busy: try again in a moment.")


def admitted(fn):
    """Hold the session's job slot (taken by ``admit`` before queueing) while the handler runs; give it back
    after, however it ends."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            session = session_of(_request_in(args, kwargs))
            SLOTS.started(session)
            try:
                yield from fn(*args, **kwargs)
            finally:
                SLOTS.finished(session)
        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        session = session_of(_request_in(args, kwargs))
        SLOTS.started(session)
        try:
            return fn(*args, **kwargs)
        finally:
            SLOTS.finished(session)
    return call


def need_disk() -> None:
    """Refuse work that writes files (runs, uploads' conversions, the images Gradio caches for every result
    and view) while the disk is short: no caller can fill it."""
    if short_of_disk([get_upload_folder(), instance_root(OUT_ROOT)], SETTINGS.min_free_disk):
        raise gr.Error(**titled("Server busy", "the server is short of disk space; try again later."),
                       print_exception=False)


def admit(request: gr.Request, what: str) -> None:
    """Before a heavy job (``what``: "a comparison") is queued: one job per session (``KALDN_APP_SESSION_JOBS``)
    and ``KALDN_APP_CLIENT_JOBS`` (8) per client address over its sessions waiting or running, so one client
    cannot fill the queue or make everyone wait behind its jobs; none while the disk is short."""
    need_disk()
    session = session_of(request)
    if not session:
        raise gr.Error(**titled("No session", "jobs are counted per session: call with a session (the page "
                                "or gradio_client have one)."), print_exception=False)
    refusal = SLOTS.refusal(session, what, client_of(request))
    if refusal == "client":
        log.info("refused a job from an address with %d waiting or running", SLOTS.client_limit)
        raise gr.Error(**titled("Too many at once", f"your address already has {SLOTS.client_limit} jobs waiting or "
                                "running (from other tabs or clients): wait for one to finish, then try again."),
                       print_exception=False)
    if refusal == "session":
        held = SLOTS.holding(session)
        # A session hash is the key to its session (heartbeat, results): logs carry its first characters only.
        log.info("refused a job of session %s...: it has %d waiting or running", session[:4], SLOTS.limit)
        jobs = " and ".join(held) if held else ("a job" if SLOTS.limit == 1 else f"{SLOTS.limit} jobs")
        finetuning = " (a fine-tune runs until it finishes or you cancel it on its tab)" \
            if "a fine-tuning job" in held else ""
        raise gr.Error(**titled("One at a time", f"you already have {jobs} waiting or running{finetuning}: wait "
                                "for it to finish, then try again."), print_exception=False)


def admit_compare(mode, image, ground_truth, scale, variants, device, crop_size, request: gr.Request):
    admit(request, "a comparison")
    return [gr.validate(True, "")] * 7


def admit_finetune(files, use_examples, base, iters, lr, batch, patch, request: gr.Request):
    admit(request, "a fine-tuning job")
    return [gr.validate(True, "")] * 7


def admit_upload(run, mode, image, ground_truth, scale, request: gr.Request):
    admit(request, "an upload check")
    return [gr.validate(True, "")] * 5


def admit_hasty(run, mode, image, ground_truth, scale, request: gr.Request):
    admit(request, "a hasty-ReLU measurement")
    return [gr.validate(True, "")] * 5


def admit_checkpoint(file, arch, scale, selected, request: gr.Request):
    admit(request, "a checkpoint conversion")
    return [gr.validate(True, "")] * 4


# --- Compare tab ------------------------------------------------------------------------------------------

def process_cache() -> ModelCache:
    """This process's model cache. ZeroGPU forks its GPU worker from the threaded server: the worker's copy of
    CACHE (and of its lock, which another thread may have held at the fork) is left for a cache of its own.
    Session models the server forgets stay in it until its LRU bound pushes them out (their folders' names are
    never reused, so no one else is served them)."""
    if os.getpid() == SERVER_PID:
        return CACHE
    return WORKER_CACHES.setdefault(os.getpid(), ModelCache(source=SETTINGS.model_source))


@gpu
def upscale_on_device(inputs: Inputs, resolved: list[ResolvedVariant], device: str, progress: Any = None):
    """The comparison's compute, alone under ``@spaces.GPU``: on ZeroGPU it runs in a forked worker process and
    only its result comes back, so it reads and writes no server state (runs, job slots, session models)."""
    if os.getpid() != SERVER_PID:
        torch.set_num_threads(1)  # OpenMP's pool does not survive a fork (as in DataLoader workers): the GPU works
    report = None if progress is None else (lambda f, d: progress(f, desc=d))
    return compare_resolved(inputs, resolved, device=device, cache=process_cache(), progress=report)


@admitted
@shows_user_errors
def run_compare(mode: str, image: Any, ground_truth: Any, scale: Any, variants: list[str] | None, device: Any,
                crop_size: Any, request: gr.Request = None, progress=gr.Progress()):
    """Upscale with every chosen variant; returns outputs, crops, metrics and downloads."""
    region_size(crop_size)  # refused before the run replaces the session's last one
    session, started, device = session_of(request), time.monotonic(), check_device(device)
    inputs = prepare_inputs(scale=scale, **compare_uploads(mode, image, ground_truth))
    resolved = admitted_variants(variants or [], inputs.scale, inputs.lr.shape[:2], SESSION_MODELS.for_owner(session),
                                 SETTINGS.max_compare_gmacs * 10**9)
    progress(0.0, desc="Loading models")
    comparison = upscale_on_device(inputs, resolved, device, progress=progress)
    run_id, run = RUNS.save(comparison, owner=session, since=started)
    for warning in comparison.warnings:
        gr.Warning(warning)
    left, right = default_pair(comparison)
    choices = pair_choices(comparison)
    slider = run.slider(left, right)
    zoom = run.zoom(None, crop_size)  # where the slider's pair differs most
    maps = run.maps(left, right)
    return (run_id, comparison.status_markdown(), slider, gr.update(choices=choices, value=left),
            gr.update(choices=choices, value=right), zoom.picker, zoom.labelled(), table(*metrics_table(comparison)),
            run.downloads(), *zoom.center, maps.pair, maps.pair_note, maps.errors, maps.errors_note)


@shows_user_errors
@admitted
def check_compare(mode: str, image: Any, ground_truth: Any, scale: Any, variants: list[str] | None, device: str,
                  crop_size: Any, request: gr.Request = None) -> None:
    """Before a run: every input check, so a bad upload or choice is a pop-up and the last results stay."""
    region_size(crop_size)
    check_device(device)
    checked = check_inputs(scale=scale, **compare_uploads(mode, image, ground_truth))
    resolved = admitted_variants(variants or [], check_scale(scale), checked.lr_size,
                                 SESSION_MODELS.for_owner(session_of(request)), SETTINGS.max_compare_gmacs * 10**9)
    if all(r.unavailable for r in resolved):
        raise UserError("None of the chosen variants can run at this scale: "
                        + "; ".join(f"{r.label}: {r.unavailable}" for r in resolved) + ".")


@admitted
def check_upload(run_id: str | None, mode: str, image: Any, ground_truth: Any, scale: Any,
                 request: gr.Request = None) -> str:
    """On upload: say at once what is wrong with the file (or what will be done with it), in the status, and
    whether the results below are still those of an earlier image."""
    if image is None:
        return UPLOAD_PROMPT
    try:
        uploads = compare_uploads(mode, image, ground_truth)
        notes = check_inputs(scale=scale, **uploads).notes
    except (UserError, ImageError) as exc:
        log.info("check_upload refused: %s", exc)
        gr.Warning(**titled("This upload cannot be used", str(exc)))
        return f"**This upload cannot be used:** {exc}"
    shown = RUNS.source(run_id, session_of(request))  # the compared file (every run's image is one)
    if shown is not None and shown != uploads["image"]:
        notes.append("The results below are still those of your last comparison, of another image.")
    return "\n\n".join(f"- {line}" for line in ["Ready: press **Run comparison**.", *notes])


@light_call
def status_after_change(image: Any, scale: Any, mode: str, request: gr.Request = None) -> str:
    """After a change of scale or mode, or a file removed, the last verdict on the upload no longer holds: say
    what happens next instead (the checks run again when the comparison starts)."""
    if image is None:
        return UPLOAD_PROMPT
    what = f"x{scale}" if scale in scales() else "this scale"
    return (f"Press **Run comparison**: the upload is checked again for {what} "
            f"({'LR' if mode == 'lr' else 'HR'} mode) when it starts.")


@shows_user_errors
@quick_view
def show_pair(run_id: str | None, left: str, right: str, request: gr.Request = None):
    """The two chosen images in the slider, and where they differ."""
    run = need_run(run_id, request)
    slider = run.slider(left, right)  # checks the two keys first
    pair, note = run.pair_view(left, right)
    return slider, pair, note


@shows_user_errors
@quick_view
def select_region(run_id: str | None, crop_size: Any, evt: gr.SelectData, request: gr.Request = None):
    """Zoom where the picker image was clicked (SelectData.index = [x, y] in the picker's pixels)."""
    view = need_run(run_id, request).zoom_at_click(getattr(evt, "index", None), crop_size)
    return view.picker, view.labelled(), *view.center


@shows_user_errors
@quick_view
def zoom(run_id: str | None, x: Any, y: Any, crop_size: Any, request: gr.Request = None):
    """Crops centred on (x, y) in output pixels, ``crop_size`` output pixels wide (no centre: where the
    slider's pair differs most)."""
    run = RUNS.get(run_id, session_of(request))
    if run is None:
        return tuple(gr.skip() for _ in range(4))  # nothing to zoom into yet: moving the controls is harmless
    center = None if x is None or y is None else (x, y)
    view = run.zoom(center, crop_size)
    return view.picker, view.labelled(), *view.center


@light_call
def set_mode(mode: str, request: gr.Request = None):
    """Relabel the upload for HR / LR mode and show the ground-truth upload in LR mode only."""
    if mode == "lr":
        return (gr.update(label="LR image (network input)"),
                gr.update(visible=True, label="Ground truth (optional; exactly the LR size x scale)"))
    return gr.update(label="HR image (ground truth)"), gr.update(visible=False, value=None)


def _variant_update(scale: Any, selected: list[str] | None, session: str | None):
    scale, available = check_scale(scale), available_models()
    finetuned = SESSION_MODELS.for_owner(session)
    choices = compare_choices(scale, available, finetuned)
    return gr.update(choices=choices, value=runnable_selection(selected, scale, available, finetuned))


@shows_user_errors
@light_call
def variant_choices(scale: Any, selected: list[str] | None, request: gr.Request = None):
    """Variant checkboxes for a scale: variants without a checkpoint at that scale are marked."""
    return _variant_update(scale, selected, session_of(request))


@admitted
@shows_user_errors
def add_checkpoint(file: Any, arch: str | None, scale: Any, selected: list[str] | None, request: gr.Request = None,
                   progress=gr.Progress()):
    """Convert an uploaded checkpoint into a model only this session sees; switch to its scale and tick it."""
    upload, selected = uploaded(file, "The checkpoint", kind="file"), ticked(selected)
    if upload is None:
        raise UserError("Upload a .pt, .pth or .safetensors checkpoint first.")
    progress(0.2, desc="Converting (in a separate, capped process)")
    entry = import_checkpoint(upload[0], upload[1], arch, scale, SESSION_MODELS, session_of(request),
                              root=instance_root(OUT_ROOT) / "uploads", max_bytes=SETTINGS.max_checkpoint_bytes,
                              memory_bytes=SETTINGS.convert_memory, timeout_s=SETTINGS.convert_seconds,
                              client=client_of(request))
    model_scale = parse_model_name(entry.model).scale
    mine = SESSION_MODELS.for_owner(session_of(request))
    available = available_models()
    whose = ("the authors' released weights, converted onto kaldn's implementation: compare them here, do not "
             "redistribute them" if entry.third_party else "kaldn weights")
    status = (f"Added **{entry.label}** ({entry.model}, {whose}). It is ticked under Variants (scale x{model_scale}); "
              "only this session sees it, and it is deleted when the session ends.")
    keep = runnable_selection([*selected, entry.key], model_scale, available, mine)
    return (status, gr.update(value=model_scale),
            gr.update(choices=compare_choices(model_scale, available, mine), value=keep))


def compare_tab(state: gr.State, available: list[str], scale0: int = 4) -> SimpleNamespace:
    """Upload, scale, variants; the slider, metrics, zoomed crops and downloads."""
    with gr.Row():
        with gr.Column(scale=2, min_width=300):
            mode = gr.Radio([("HR image (ground truth)", "hr"), ("LR image (+ optional ground truth)", "lr")],
                            value="hr", label="What are you uploading?")
            image = gr.Image(label="HR image (ground truth)", type="filepath", image_mode=None, format="png",
                             sources=["upload", "clipboard"], height=280, elem_id="kaldn-input")
            gt = gr.Image(label="Ground truth (optional; exactly the LR size x scale)", type="filepath",
                          image_mode=None, format="png", sources=["upload", "clipboard"], height=200,
                          visible=False, elem_id="kaldn-gt")
            scale = gr.Radio(list(scales()), value=scale0, label="Scale")
            variants = gr.CheckboxGroup(compare_choices(scale0, available),
                                        value=default_variants(scale0, available), label="Variants",
                                        elem_id="kaldn-variants")
            device = gr.Radio([("Auto", "auto"), ("CUDA", "cuda"), ("CPU", "cpu")], value="auto", label="Device")
            run = gr.Button("Run comparison", variant="primary", elem_id="kaldn-run")
            with gr.Accordion("Compare with your own checkpoint", open=False):
                peers = " / ".join(a.label for a in published_architectures().values())
                gr.Markdown(f"A published {peers} `.pt` / `.pth` state dict, or a kaldn "
                            f"`.safetensors`, up to {SETTINGS.max_checkpoint_bytes >> 20} MiB. Read without running "
                            "code from the file (`torch.load(weights_only=True)`), in a separate process; every "
                            "tensor must fit the architecture. Only this session sees it.")
                ckpt_file = gr.File(label="Checkpoint", file_types=[".pt", ".pth", ".safetensors"],
                                    elem_id="kaldn-ckpt-file")
                archs = upload_archs()
                ckpt_arch = gr.Dropdown(archs, value=archs[0][1], label="What it holds", elem_id="kaldn-ckpt-arch")
                ckpt_scale = gr.Radio(list(scales()), value=scale0, label="Its scale (a .pt / .pth does not say)")
                ckpt_add = gr.Button("Add to Variants", elem_id="kaldn-ckpt-add")
                ckpt_status = gr.Markdown(elem_id="kaldn-ckpt-status")
            examples = gr.Examples([[str(p), "hr"] for p in EXAMPLES], inputs=[image, mode],
                                   label="Examples (HR; one click runs the comparison)",
                                   example_labels=[p.stem for p in EXAMPLES], cache_examples=False)
        with gr.Column(scale=5):
            status = gr.Markdown(UPLOAD_PROMPT,
                                 elem_id="kaldn-status")
            with gr.Row():
                left = gr.Dropdown(label="Slider: left", choices=[], interactive=True)
                right = gr.Dropdown(label="Slider: right", choices=[], interactive=True)
            with gr.Row():
                slider = gr.ImageSlider(label="Side by side (drag the handle; fullscreen to zoom)", format="png",
                                        type="filepath", interactive=False, max_height=600, elem_id="kaldn-slider")
                pair_map = gr.Image(label="Where the slider's two images differ (against the ground truth)",
                                    show_label=False, format="png", interactive=False, elem_id="kaldn-pair-map",
                                    buttons=["download", "fullscreen"])
            pair_note = gr.Markdown(elem_id="kaldn-pair-note")
    metrics = gr.Dataframe(pd.DataFrame(columns=METRIC_HEADERS),
                           label="Metrics vs ground truth (PSNR/SSIM on Y, border = scale). No time column: one "
                                 "run on a shared machine is noise; speed is in Model zoo (benchmark, warm runs)",
                           interactive=False, wrap=True, elem_id="kaldn-metrics",
                           column_widths=["15%", "15%", "7%", "7%", "9%", "8%", "8%", "14%", "17%"])
    gr.Markdown("### Where each output is wrong\nThe variants' outputs differ from each other by about one grey "
                "level on average, too little to see side by side. These maps show the error itself, all on one colour "
                "scale; the map beside the slider shows which of its two images is closer where.")
    errors_note = gr.Markdown(elem_id="kaldn-errors-note")
    errors = gr.Image(label="Error maps: |output - ground truth| on Y, one shared scale", show_label=False,
                      format="png", interactive=False, elem_id="kaldn-errors", buttons=["download", "fullscreen"])
    with gr.Row():
        with gr.Column(scale=2, min_width=280):
            picker = gr.Image(label="Click to choose the zoom region", format="png", interactive=False,
                              height=340, elem_id="kaldn-picker", buttons=["fullscreen"])
            crop_size = gr.Slider(*REGION_SIZES, value=DEFAULT_REGION_SIZE, step=4, label="Region size (output pixels)")
            with gr.Row():
                cx = gr.Number(label="Region centre x", precision=0, min_width=80, elem_id="kaldn-cx")
                cy = gr.Number(label="Region centre y", precision=0, min_width=80, elem_id="kaldn-cy")
        with gr.Column(scale=5):
            gallery = gr.Gallery(label="Zoomed crops, same region (nearest-neighbour enlargement); first shown "
                                       "where the slider's pair differs most", columns=5,
                                 format="png", height="auto", object_fit="contain", elem_id="kaldn-gallery")
    files = gr.File(label="Downloads: lossless PNG outputs and metrics.csv", file_count="multiple",
                    interactive=False, height=560, elem_id="kaldn-files")  # 10+ files without scrolling

    mode.change(set_mode, [mode], [image, gt], api_name="set_mode", queue=False)
    scale.change(variant_choices, [scale, variants], [variants], api_name="variant_choices", queue=False)
    compare_inputs = [mode, image, gt, scale, variants, device, crop_size]
    compare_outputs = [state, status, slider, left, right, picker, gallery, metrics, files, cx, cy,
                       pair_map, pair_note, errors, errors_note]
    # The checks run first with no outputs: a bad input is a pop-up and the last results stay as they were
    # (an error in the run itself would cover every output with an error badge). Each step takes the
    # session's one job slot before it is queued (validator) and gives it back when it ends.
    # preprocess=False: the handlers read the file Gradio saved (16-bit and alpha intact), via ``uploaded``.
    run.click(check_compare, compare_inputs, None, api_name="check_compare", preprocess=False,
              concurrency_id=CHECKS, concurrency_limit=1, validator=admit_compare).success(
        run_compare, compare_inputs, compare_outputs, api_name="compare", preprocess=False, concurrency_id="compute",
        validator=admit_compare)
    examples.load_input_event.then(check_compare, compare_inputs, None, api_name="check_compare_example",
                                   preprocess=False, concurrency_id=CHECKS, concurrency_limit=1,
                                   validator=admit_compare).success(
        run_compare, compare_inputs, compare_outputs, api_name="compare_example", preprocess=False,
        concurrency_id="compute", validator=admit_compare)
    gr.on([image.upload, gt.upload], check_upload, [state, mode, image, gt, scale], [status], api_name="check_upload",
          preprocess=False, concurrency_id=CHECKS, concurrency_limit=1, validator=admit_upload)
    # Removing a file (a refused one included) must not leave its verdict standing.
    gr.on([scale.input, mode.input, image.clear, gt.clear], status_after_change, [image, scale, mode], [status],
          api_name="status_after_change", queue=False, preprocess=False, show_progress="hidden")
    gr.on([left.input, right.input], show_pair, [state, left, right], [slider, pair_map, pair_note],
          api_name="slider_pair", queue=False)
    picker.select(select_region, [state, crop_size], [picker, gallery, cx, cy], api_name="select_region", queue=False,
                  show_progress="hidden")
    # Typed values count too: the slider's number box (input) and the centre boxes (Enter). Not on blur: a
    # click on the picker right after typing would race a second zoom.
    gr.on([crop_size.input, cx.submit, cy.submit], zoom, [state, cx, cy, crop_size], [picker, gallery, cx, cy],
          api_name="zoom", trigger_mode="always_last", show_progress="hidden", queue=False)  # quick: no overlay on the picker
    # preprocess=False: the handler checks the payload itself (``uploaded``) and keeps the file's name.
    added = ckpt_add.click(add_checkpoint, [ckpt_file, ckpt_arch, ckpt_scale, variants], [ckpt_status, scale, variants],
                           api_name="add_checkpoint", preprocess=False, concurrency_id="compute",
                           validator=admit_checkpoint)
    return SimpleNamespace(mode=mode, image=image, gt=gt, scale=scale, variants=variants, added=added)


# --- Model zoo tab ----------------------------------------------------------------------------------------

@shows_user_errors
@light_call
def zoo(scale_filter: Any, request: gr.Request = None) -> pd.DataFrame:
    """The zoo table, all scales or one."""
    return table(*zoo_table(scale=scale_filter))


def zoo_tab(featured: dict | None) -> None:
    """Every evaluated model's measured numbers, cost and training budget, with the protocol explained."""
    gr.Markdown(ZOO_INTRO.replace("{featured}", _featured_zoo(featured)))
    zoo_scale = gr.Radio([("All", "all"), *[(f"x{s}", str(s)) for s in scales()]], value="all", label="Scale")
    zoo_df = gr.Dataframe(table(*zoo_table(scale="all")), interactive=False, wrap=True, elem_id="kaldn-zoo",
                          column_widths=["12%", "5%", "9%", "4.5%", "6.5%", "6.5%", "6.5%", "6%", "7.5%", "7.5%", "7.5%",
                                         "14.5%", "7%"],  # "Scale", "Seed", "(256²)", "bundled" unbroken
                          max_height=4000)  # every row rendered: no scrolling inside the table
    gr.Markdown(_zoo_timing(), elem_id="kaldn-zoo-timing")
    zoo_scale.change(zoo, [zoo_scale], [zoo_df], api_name="zoo", queue=False)


def _zoo_timing() -> str:
    """Which machine timed each scale's CPU ms: read once, the results files do not change while serving."""
    notes = [f"- x{s}: {note}" for s in scales()
             if (data := load_results(s, ROOT / "results")) and (note := timing_note(data["rows"]))]
    return "**CPU ms, by machine**\n\n" + "\n".join(notes) if notes else ""


# --- Results tab ------------------------------------------------------------------------------------------

def _padded(values: list[float], pad: float = 0.15) -> list[float] | None:
    # PSNR differences are tenths of a dB: a zero-based axis would flatten them. Vega draws a one-point (or
    # flat) series with ticks such as "30.479298 / 0.000000": give it a range.
    if not values:
        return None
    lo, hi = min(values), max(values)
    margin = max(pad, 0.1 * (hi - lo))
    return [round(lo - margin, 3), round(hi + margin, 3)]


def results_data(scale: Any) -> tuple[str, pd.DataFrame, pd.DataFrame, str, pd.DataFrame, pd.DataFrame, str]:
    """(claims Markdown, claims at a glance, curves, curves note, PSNR by CPU time, PSNR by parameters, cost note)
    for one scale."""
    scale = check_scale(scale)
    data = load_results(scale, ROOT / "results")
    if data is None:
        claims_md = f"No `results/x{scale}.json` here: run `python -m kaldn.evaluate --scale {scale}` to make it."
        glance = table(["Claim", "Budget"], [])
    else:
        claims_md = "In full:\n\n" + claims(data["rows"], data["datasets"])
        glance = table(*claims_table(data["rows"], data["datasets"]))
    points, missing = training_curves(scale=scale)
    # Numeric columns typed even when empty: the plot fixes its axis types from the first value it gets.
    curves = pd.DataFrame(points, columns=["model", "variant", "iteration", "val_psnr"]).astype(
        {"iteration": float, "val_psnr": float}).rename(columns={"val_psnr": "validation PSNR (dB)"})
    curves_md = CURVES_NOTE
    if missing:
        curves_md += (f"\n**No training log** for {len(missing)} bundled x{scale} model(s) "
                      f"({', '.join(missing)}): their run folders were not kept, so no curve can be drawn for "
                      "them. Models shipped with their `log.jsonl` get a curve here.")
    cost = pd.DataFrame(psnr_cost_points(scale, "set5", ROOT / "results"),
                        columns=["model", "label", "source", "psnr", "cpu_ms", "params"]).astype(
        {"psnr": float, "cpu_ms": float, "params": float})
    cost = cost.rename(columns={"psnr": "Set5 PSNR (dB)", "cpu_ms": "CPU ms (256x256)", "params": "parameters",
                                "label": "model / published"})
    timing = timing_note(data["rows"]) if data else ""
    cost_md = cost_note(scale) + (f" {timing}" if timing else "")
    return (claims_md, glance, curves, curves_md, cost.dropna(subset=["CPU ms (256x256)"]),
            cost.dropna(subset=["parameters"]), cost_md)


def _x_range(values: list[float]) -> list[float] | None:
    return [0, round(max(values) * 1.08)] if values else None  # the last point not on the frame


@shows_user_errors
@light_call
def results_view(scale: Any, request: gr.Request = None):
    """The claims with seed spreads, the training curves and PSNR against cost, for one scale."""
    claims_md, glance, curves, curves_md, by_cpu, by_params, cost_md = results_data(scale)
    return (claims_md, glance, gr.LinePlot(curves, y_lim=_padded(curves["validation PSNR (dB)"].tolist())), curves_md,
            gr.ScatterPlot(by_cpu, y_lim=_padded(by_cpu["Set5 PSNR (dB)"].tolist()),
                           x_lim=_x_range(by_cpu["CPU ms (256x256)"].tolist())),
            gr.ScatterPlot(by_params, y_lim=_padded(by_params["Set5 PSNR (dB)"].tolist())), cost_md)


def results_tab() -> SimpleNamespace:
    """The equal-budget claims, training curves and PSNR against cost: readable without README."""
    claims0, glance0, curves0, curves_md0, cpu0, params0, cost_md0 = results_data(4)  # two small files, no models
    scale = gr.Radio([(f"x{s}", s) for s in scales()], value=4, label="Scale")
    gr.Markdown(RESULTS_INTRO)
    glance = gr.Dataframe(glance0, label=f"At a glance: each claim's verdict and PSNR margin per test set ({GLANCE_NOTE})",
                          interactive=False, wrap=True, elem_id="kaldn-glance",
                          column_widths=["34%", "24%"] + [f"{42 / max(1, len(glance0.columns) - 2):.1f}%"]
                          * (len(glance0.columns) - 2), max_height=2000)  # every claim visible, no inner scroll
    claims_md = gr.Markdown(claims0, elem_id="kaldn-claims")
    with gr.Row():
        psnr = "Set5 PSNR (dB)"
        cpu_plot = gr.ScatterPlot(cpu0, x="CPU ms (256x256)", y=psnr, color="model / published",
                                  title="PSNR against CPU time", y_lim=_padded(cpu0[psnr].tolist()),
                                  x_lim=_x_range(cpu0["CPU ms (256x256)"].tolist()),
                                  tooltip=["model", "CPU ms (256x256)", psnr], height=380, elem_id="kaldn-cost-cpu")
        params_plot = gr.ScatterPlot(params0, x="parameters", y=psnr, color="model / published",
                                     title="PSNR against parameters (trained)", y_lim=_padded(params0[psnr].tolist()),
                                     tooltip=["model", "parameters", psnr], height=380, elem_id="kaldn-cost-params")
    cost_md = gr.Markdown(cost_md0)
    curves_plot = gr.LinePlot(curves0, x="iteration", y="validation PSNR (dB)", color="model",
                              title="Validation PSNR during training", height=340, elem_id="kaldn-curves",
                              y_lim=_padded(curves0["validation PSNR (dB)"].tolist()))
    curves_md = gr.Markdown(curves_md0, elem_id="kaldn-curves-note")
    outputs = [claims_md, glance, curves_plot, curves_md, cpu_plot, params_plot, cost_md]
    scale.change(results_view, [scale], outputs, api_name="results", queue=False)
    return SimpleNamespace(scale=scale, outputs=outputs)


# --- Fine-tune tab ----------------------------------------------------------------------------------------

def curves(update) -> tuple[gr.LinePlot, gr.LinePlot]:
    """The loss and validation-PSNR plots, with axes that read well from the first point on."""
    loss, psnr = pd.DataFrame(update.loss_curve()), pd.DataFrame(update.psnr_curve())
    x_lim = [0, max(int(update.total), 1)]
    return (gr.LinePlot(loss, x_lim=x_lim, y_lim=_padded(loss["loss"].tolist() if "loss" in loss else [], 0.005)),
            gr.LinePlot(psnr, x_lim=x_lim, y_lim=_padded(psnr["PSNR (dB)"].tolist() if "PSNR (dB)" in psnr else [],
                                                          0.25)))


@admitted
@shows_user_errors
def finetune(files: list[str] | None, use_examples: bool, base: str | None, iters: Any, lr: Any, batch: Any,
             patch: Any, request: gr.Request = None, progress=gr.Progress()):
    """Fine-tune ``base`` on the uploaded HR images; streams (status, loss curve, PSNR curve, downloads)."""
    # gr.File's preprocessing already refused any path Gradio did not save for this request.
    images = list(files or []) + ([str(p) for p in EXAMPLES] if use_examples else [])
    if use_examples and files and len(images) > FINETUNE.max_images >= len(files):
        raise UserError(f"{len(files)} uploaded images and the {len(EXAMPLES)} examples make {len(images)}; the "
                        f"limit on this server is {FINETUNE.max_images}: untick the examples, or upload fewer.")
    settings = FineTuneSettings.from_form(base, iters, lr, batch, patch, device="cpu" if ON_ZERO_GPU else "auto")
    owner = session_of(request)
    if owner is None:
        raise UserError("Fine-tuning needs a session (the page, or gradio_client).")
    with closing(FINETUNE.run(images, settings, owner=owner, max_pixels=SETTINGS.max_pixels,
                              client=client_of(request))) as updates:
        for update in updates:
            for note in update.notes:
                gr.Warning(note)
            progress((update.iteration, update.total), desc="iterations", unit="it")
            yield update.status, *curves(update), update.downloads


def cancel_finetune(request: gr.Request):
    """Stop your running fine-tuning job after the current iteration (its model is kept); only yours."""
    kind, message = FINETUNE.cancel_message(owner=session_of(request))
    (gr.Warning if kind == "warning" else gr.Info)(message)


def finetune_tab() -> SimpleNamespace:
    """Train a bundled model further on the user's images, with live curves."""
    bases = base_choices(available_models())
    gr.Markdown("Fine-tune a bundled model on a few of your own HR images (LR patches are made with the "
                "same MATLAB-compatible bicubic). One job at a time on this server; at most "
                f"{FINETUNE.max_iters} iterations and {FINETUNE.time_budget_s:.0f} s per job; at most "
                f"{FINETUNE.max_images} images of up to {_mp(SETTINGS.max_pixels)} each and "
                f"{_mp(FINETUNE.max_total_pixels)} in all (the {len(EXAMPLES)} examples count when ticked). The "
                "result appears in the Compare choices and can be downloaded as safetensors. It belongs to this "
                "page's session: reloading or closing the page stops a running job and deletes your models.")
    with gr.Row():
        with gr.Column(scale=2, min_width=300):
            files = gr.File(label="HR training images", file_count="multiple", file_types=["image"],
                            elem_id="kaldn-ft-files")
            use_examples = gr.Checkbox(label="Also train on the bundled example images", value=True)
            base = gr.Dropdown(bases, value=default_base(bases), label="Base model")
            iters = gr.Slider(10, FINETUNE.max_iters, value=min(200, FINETUNE.max_iters), step=10,
                              label="Iterations", elem_id="kaldn-ft-iters")
            halve = "/".join(f"{100 * f:.0f}" for f in TrainConfig().lr_halve_at)
            lr = gr.Number(2e-4, label=f"Learning rate (Adam; halved at {halve}% of the run)",
                           info=f"from {LR_RANGE[0]:g} to {LR_RANGE[1]:g}")
            with gr.Accordion("Advanced", open=False):
                batch = gr.Slider(*BATCH_RANGE, value=8, step=1, label="Batch size (patches)",
                                  info=f"batch x patch² at most {FINETUNE.max_batch_pixels:,} LR pixels per step "
                                       f"on this server: up to {FINETUNE.max_batch_pixels // 48 ** 2} patches of 48, "
                                       f"{FINETUNE.max_batch_pixels // 96 ** 2} of 96")
                patch = gr.Slider(*PATCH_RANGE, value=32, step=8, label="LR patch size (pixels)")
            with gr.Row():
                start = gr.Button("Start fine-tuning", variant="primary", elem_id="kaldn-ft-start")
                cancel = gr.Button("Cancel", variant="stop", elem_id="kaldn-ft-cancel")
        with gr.Column(scale=3):
            status = gr.Markdown("Not started.", elem_id="kaldn-ft-status")
            with gr.Row():
                loss_plot = gr.LinePlot(pd.DataFrame({"iteration": [], "loss": []}), x="iteration", y="loss",
                                        title="Training loss (L1)", height=280)
                psnr_plot = gr.LinePlot(pd.DataFrame({"iteration": [], "PSNR (dB)": []}), x="iteration",
                                        y="PSNR (dB)", title="Validation PSNR (dB)", height=280)
            download = gr.File(label="Fine-tuned model (model.safetensors + config.json)", file_count="multiple",
                               interactive=False)

    train_event = start.click(finetune, [files, use_examples, base, iters, lr, batch, patch],
                              [status, loss_plot, psnr_plot, download], api_name="finetune",
                              concurrency_limit=None, concurrency_id="finetune", validator=admit_finetune,
                              show_progress="hidden")  # the status line says the progress; no flickering overlay
    cancel.click(cancel_finetune, None, None, api_name="cancel_finetune", queue=False)
    return SimpleNamespace(base=base, trained=train_event)


# --- How it works tab -------------------------------------------------------------------------------------

def how_choices(session: str | None = None) -> list[tuple[str, str]]:
    """Bundled models with depthwise kernels, then the session's own (by key)."""
    own = [(e.label, e.key) for e in SESSION_MODELS.for_owner(session).items()
           if (v := variant_of(e.model)) is not None and v.depthwise]
    return inspection_choices(available_models()) + own


def kernel_view_of(model_ref: str | None, layer: str | None, request: gr.Request | None):
    """The kernel view of a model the session may inspect: a bundled one (by name), or one of its own (by key,
    loaded from its folder)."""
    if not model_ref:
        raise UserError("Choose a model with depthwise layers first.")
    if not isinstance(model_ref, str) or model_ref not in {value for _, value in how_choices(session_of(request))}:
        raise UserError("Unknown model: choose one from the list.")
    entry = SESSION_MODELS.for_owner(session_of(request)).get(model_ref)
    ref, label = (str(entry.path), entry.label) if entry is not None else (model_ref, model_ref)
    return kernel_view(CACHE, ref, layer, label=label)


def z_against_a(kernel_table: pd.DataFrame) -> pd.DataFrame:
    """One point per kernel of a KDSConv layer (from its per-kernel table): its descriptor z and its attention a
    (none for other layers)."""
    return kernel_table[Z_A_HEADERS].dropna().astype(float)


@shows_user_errors
@quick_view
def kernel_model(model_ref: str | None, layer: str | None, request: gr.Request = None):
    """Choose a model: its layers, and the kernels of the current (or a default) layer, plus its gate report."""
    view = kernel_view_of(model_ref, layer, request)
    per_kernel = table(KERNEL_HEADERS, view.kernel_rows)
    return (gr.update(choices=view.layers, value=view.layer), view.grid, per_kernel, z_against_a(per_kernel),
            table(view.gate_headers, view.gate_rows), view.gate_note)


@shows_user_errors
@quick_view
def kernels(model_ref: str | None, layer: str | None, request: gr.Request = None):
    """The depthwise kernels of one layer as heat maps, with det/avg/max pooled values and 1 + a."""
    view = kernel_view_of(model_ref, layer, request)
    per_kernel = table(KERNEL_HEADERS, view.kernel_rows)
    return view.grid, per_kernel, z_against_a(per_kernel)


@admitted
@shows_user_errors
def hasty_relu(run_id: str | None, mode: str, image: Any, ground_truth: Any, scale: Any,
               request: gr.Request = None):
    """Share of depthwise outputs that DSConv's ReLU zeroes vs what linear DSConv keeps, on the current image."""
    run = RUNS.get(run_id, session_of(request))
    upload = uploaded(image, "The image")
    lr, where = measurement_input(scale, run.comparison.inputs if run else None, upload and upload[0], mode,
                                  EXAMPLES[0] if EXAMPLES else None, max_pixels=SETTINGS.max_pixels,
                                  max_output_pixels=SETTINGS.max_output_pixels, upload_name=upload and upload[1])
    report = hasty_relu_report(lr, check_scale(scale), CACHE, where=where)
    outcome = hasty_outcome(run.comparison) if run is not None and run.comparison.inputs.lr is lr else ""
    return (report.summary + outcome, report.maps, table(HASTY_HEADERS, report.rows),
            table(HASTY_LAYER_HEADERS, report.per_layer))


def how_evidence(scale: int = 4, dataset: str = "set5") -> str:
    """The papers' margins beside this project's equal-budget claims on one dataset (read from the results file)."""
    data = load_results(scale, ROOT / "results")
    if data is None or dataset not in data["datasets"]:
        return HOW_EVIDENCE + f"\nNo {dataset} results at x{scale} here: `python -m kaldn.evaluate --scale {scale}` makes them."
    return HOW_EVIDENCE + "\n" + claims(data["rows"], [dataset])


def how_tab() -> SimpleNamespace:
    """The depthwise kernels and their attention, the gate report, and the hasty ReLU on the current image."""
    hows = how_choices()
    gr.Markdown(how_blocks())
    gr.Markdown(HOW_DET)
    gr.Markdown(HOW_KERNELS.format(near_constant=NEAR_CONSTANT_STD))
    with gr.Row():
        model = gr.Dropdown(hows, value=hows[0][1] if hows else None, label="Model")
        layer = gr.Dropdown([], label="Layer (residual dense block . layer)")
    kernel_img = gr.Image(label="Depthwise kernels", show_label=False, format="png", interactive=False,
                          elem_id="kaldn-kernels", buttons=["download", "fullscreen"])
    with gr.Row():
        za_plot = gr.ScatterPlot(z_against_a(table(KERNEL_HEADERS, [])), x=Z_A_HEADERS[0], y=Z_A_HEADERS[1],
                                 y_lim=[0, 1], height=260,
                                 label="This layer's attention a against each kernel's descriptor z (KDSConv only)",
                                 elem_id="kaldn-za")
        with gr.Column():
            gr.Markdown("Each point is one kernel. A rising cloud: kernels with a larger descriptor `z` (the "
                        "layer's normalised det, avg or max) got more attention; a flat horizontal band: a "
                        "near-constant gate (at a = 0.5 exactly: a dead one); points spread with no slope: `a` "
                        "depends on the other kernels' `z` as much as on the kernel's own.")
    with gr.Accordion("Per-kernel values", open=False):
        kernel_df = gr.Dataframe(table(KERNEL_HEADERS, []), interactive=False, max_height=360)
    gate_md = gr.Markdown(elem_id="kaldn-gate-note")
    gate_df = gr.Dataframe(table(GATE_HEADERS, []), label="Gate report (every KDSConv layer: how widely a spreads, "
                           "whether it follows z, and whether the gate is dead or near-constant)", interactive=False, max_height=300, elem_id="kaldn-gates")
    gr.Markdown(HOW_RELU)
    hasty_btn = gr.Button("Measure on the current image")
    hasty_md = gr.Markdown("Press **Measure on the current image**: the Compare tab's image (or the first "
                           "example when there is none).", elem_id="kaldn-hasty")
    hasty_gallery = gr.Gallery(label="Where the depthwise output is negative", columns=3, format="png",
                               height="auto", object_fit="contain")
    hasty_df = gr.Dataframe(table(HASTY_HEADERS, []), label="Whole model", interactive=False)
    with gr.Accordion("Per layer", open=False):
        hasty_layers = gr.Dataframe(table(HASTY_LAYER_HEADERS, []), interactive=False, max_height=360)
    gr.Markdown(how_evidence(), elem_id="kaldn-evidence")
    gr.Markdown(PAPERS)

    kernel_outputs = [layer, kernel_img, kernel_df, za_plot, gate_df, gate_md]
    model.change(kernel_model, [model, layer], kernel_outputs, api_name="kernel_model", queue=False)
    layer.input(kernels, [model, layer], [kernel_img, kernel_df, za_plot], api_name="kernels", queue=False)
    return SimpleNamespace(model=model, layer=layer, kernel_outputs=kernel_outputs,
                           hasty_button=hasty_btn, hasty_outputs=[hasty_md, hasty_gallery, hasty_df, hasty_layers])


# --- layout -----------------------------------------------------------------------------------------------

def _model_lists(scale: Any, selected: list[str] | None, base: str | None, how: str | None, session: str | None):
    bases, hows = base_choices(available_models(), SESSION_MODELS.for_owner(session)), how_choices(session)
    base_value = base if isinstance(base, str) and base in {v for _, v in bases} else default_base(bases)
    how_value = how if isinstance(how, str) and how in {v for _, v in hows} else (hows[0][1] if hows else None)
    return (_variant_update(scale, selected, session), gr.update(choices=bases, value=base_value),
            gr.update(choices=hows, value=how_value))


@shows_user_errors
@light_call
def refresh_models(scale: Any, selected: list[str] | None, base: str | None, how: str | None,
                   request: gr.Request = None):
    """Refresh every model list after a fine-tune or an upload: the session sees its own models only."""
    return _model_lists(scale, selected, base, how, session_of(request))


# On page load the lists already hold every bundled model; when the server is busy they keep that, silently.
@outside_queue(LISTS, "", skip=3)
def refresh_on_load(scale: Any, selected: list[str] | None, base: str | None, how: str | None,
                    request: gr.Request = None):
    """Every model list on page load (a reloaded page's session may still have its own models)."""
    return _model_lists(scale, selected, base, how, session_of(request))


CSS = """
#kaldn-status ul { margin: 0; }
#kaldn-gallery .caption-label { font-size: 0.8rem; }
/* The map's title lines are drawn into its top edge: keep them clear of the download / fullscreen buttons. */
#kaldn-pair-map img { margin-top: 2.25rem; }
"""


def build_demo() -> gr.Blocks:
    """The whole app (queue configured); ``launch()`` it."""
    available = available_models()
    # No usage reports to Gradio's servers from a page users upload their images to (and the app may run offline).
    with gr.Blocks(title="KALDN super-resolution", delete_cache=None, analytics_enabled=False) as demo:
        featured = featured_budget()  # read once: the intro and the zoo tab describe the same model
        gr.Markdown(INTRO.replace("{featured}", _featured_intro(featured)))
        if not available:
            gr.Markdown("**No bundled checkpoint was found** (`checkpoints/`, or `KALDN_CHECKPOINTS`): only bicubic "
                        "can run until models are added.")
        # The id of this session's last comparison (its arrays and files stay on the server, in RUNS).
        state = gr.State(None, time_to_live=SETTINGS.session_ttl, delete_callback=drop_run)
        with gr.Tab("Compare", id="compare"):
            compare = compare_tab(state, available)
        with gr.Tab("Model zoo", id="zoo"):
            zoo_tab(featured)
        with gr.Tab("Results", id="results"):
            results_tab()
        with gr.Tab("Fine-tune", id="finetune"):
            tune = finetune_tab()
        with gr.Tab("How it works", id="how") as how_tab_:
            how = how_tab()

        # Across tabs: a fine-tuned model joins every model list; the hasty ReLU measures the Compare image.
        lists = [compare.scale, compare.variants, tune.base, how.model]
        tune.trained.then(refresh_models, lists, lists[1:], api_name="refresh_after_finetune", queue=False)
        compare.added.success(refresh_models, lists, lists[1:], api_name="refresh_after_checkpoint", queue=False)
        demo.load(refresh_on_load, lists, lists[1:], api_name="refresh_models", queue=False)
        hasty_inputs = [state, compare.mode, compare.image, compare.gt, compare.scale]
        how.hasty_button.click(hasty_relu, hasty_inputs, how.hasty_outputs, api_name="hasty_relu", preprocess=False,
                               concurrency_id="compute", validator=admit_hasty)
        # The measurement is a job (it waits in the compute line and takes the session's slot): run on request
        # only, so opening the tab never blocks the session's next comparison.
        how_tab_.select(kernel_model, [how.model, how.layer], how.kernel_outputs, api_name="open_how_it_works",
                        queue=False)
        demo.unload(end_session)

    # api_open=False: /gradio_api/run/... cannot skip the queue (and its concurrency limit).
    demo.queue(default_concurrency_limit=SETTINGS.concurrency, max_size=SETTINGS.queue_size, api_open=False)
    _DEMOS.add(demo)
    if not _SWEEPER.is_alive():
        _SWEEPER.start()
    return demo


def end_session(request: gr.Request):
    """The session's page was closed: stop its fine-tuning job, delete its comparison files and models."""
    session = session_of(request)
    if session:
        FINETUNE.cancel(owner=session)
        # Only a session with a job waiting or running is remembered as ended (so that job's result is dropped):
        # any client can "end" a made-up session, and those must cost nothing.
        busy = bool(SLOTS.holding(session))
        (RUNS.end_owner if busy else RUNS.drop_owner)(session)
        (SESSION_MODELS.end_owner if busy else SESSION_MODELS.drop_owner)(session)


def launch_kwargs() -> dict[str, Any]:
    """Everything ``launch()`` needs besides host/port (also used by the tests)."""
    return {
        "max_file_size": SETTINGS.max_file_size,
        "allowed_paths": [str(EXAMPLES_DIR)],
        # Outermost first: the body is capped before CheckedBodies reads it whole.
        "app_kwargs": {"middleware": [Middleware(BodyLimit, max_body=SETTINGS.max_body,
                                                 max_upload=SETTINGS.upload_cap,
                                                 min_free=SETTINGS.min_free_disk, disk=get_upload_folder(),
                                                 client_upload=SETTINGS.client_upload,
                                                 upload_window_s=UPLOAD_MAX_AGE_S + SWEEP_INTERVAL_S),
                                      Middleware(CheckedBodies, uploads=get_upload_folder())]},
        "theme": gr.themes.Soft(),
        "css": CSS,
        "show_error": False,  # gr.Error messages are shown; an unexpected error's text (paths, internals) is not
        "state_session_capacity": SETTINGS.sessions,  # each session's input values are kept: bounded
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    port = os.environ.get("GRADIO_SERVER_PORT")
    build_demo().launch(server_name=os.environ.get("GRADIO_SERVER_NAME") or None,
                        server_port=int(port) if port else None, **launch_kwargs())
