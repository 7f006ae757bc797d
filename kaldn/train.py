"""Training and fine-tuning: one code path for the CLI, the app's fine-tune tab and the model zoo.

    python -m kaldn.train --model tiny-kdsconv-det-x4 --data ../shared/data/train/sun_hays80 \
        --iters 2000 --precision bf16 --ema 0.999 --out runs/kdsconv-det

Recipe (paper 001, scaled to the budget): random HR crops with flips and 90-degree
rotations, LR made by the project's MATLAB ``imresize``, L1 loss, Adam with the
learning rate halved at fixed fractions of the run, validation PSNR/SSIM on the
Y channel every ``val_every`` iterations with the best checkpoint kept.

Validation is never a benchmark: unless ``--val`` names a folder, every
``val_holdout``-th training image (the 10th, 20th, ... by sorted file name) is
held out of training and validated on. ``--precision bf16`` trains under
autocast with fp32 master weights; ``--ema D`` keeps an exponential moving
average of the weights, and the average is what is validated and saved.
``--clip-grad N`` rescales a step's gradients whose L2 norm exceeds N (off by
default; the long runs' loss spikes grew from gradients 1,000x their median).

Output folder:
    last/, best/             checkpoints (model.safetensors + config.json)
    train_state.safetensors  weights, optimizer and RNG state for --resume (one file: atomic)
    log.jsonl                one JSON object per log / validation event, for plots
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .checkpoint import CONFIG_NAME, CheckpointError, atomic_write, read_config, save_checkpoint
from .data import TrainingDataError, list_images, load_pairs, split_holdout
from .errors import UserError
from .hub import add_source_option, load_model
from .images import image_to_tensor, tensor_to_image
from .inference import resolve_device
from .gates import gate_report, gate_summary
from .layers import DEFAULT_DESCRIPTOR_NORM, DESCRIPTOR_NORMS
from .metrics import mean_scores
from .models import create_model, options_taken
from .settings import DEFAULT_MODEL_SOURCE

log = logging.getLogger("kaldn.train")

STATE_NAME = "train_state.safetensors"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class TrainStateError(ValueError):
    """A run folder that cannot be resumed (or would be overwritten); the message names the file and the way out."""


class TrainingDiverged(UserError):
    """The loss or the weights became NaN or infinite: the learning rate is too high for this model and data.
    Nothing of the broken weights was logged or saved."""

    def __init__(self, iteration: int) -> None:
        super().__init__(f"The training diverged: the loss or the weights became NaN or infinite by iteration {iteration}. "
                         "Try a lower learning rate.")
        self.iteration = iteration


@dataclass
class TrainConfig:
    model: str | None = None        # model name; may be omitted with init (taken from it)
    data: str = ""                  # folder of HR images
    out: str = "runs/train"
    val: str | None = None          # folder of HR images for validation; None: hold out part of data
    val_holdout: int = 10           # with val None: every Nth image of data is validation, not training
    iters: int = 1000
    batch: int = 16
    patch: int = 48                 # LR patch side; HR crops are patch * scale
    lr: float = 1e-3
    lr_halve_at: tuple[float, ...] = (0.5, 0.7, 0.85, 0.95)  # fractions of iters where lr halves (~cosine)
    seed: int = 0
    device: str = "auto"
    init: str | None = None         # model name or checkpoint directory to fine-tune from
    init_source: str = DEFAULT_MODEL_SOURCE  # where an init given by model name loads from (kaldn.hub's sources)
    resume: bool = False            # continue out/train_state.safetensors (an error if there is none)
    force: bool = False             # start over in an out folder that already holds a run
    val_every: int = 250
    save_every: int = 100           # resume-state interval
    val_limit: int | None = None    # validate on the first N images only
    descriptor_norm: str = DEFAULT_DESCRIPTOR_NORM
    precision: str = "auto"         # "bf16": autocast (CPU or CUDA), "fp16": autocast + loss scaling (CUDA);
                                    # "auto": bf16 where the hardware computes it natively, else fp32
    ema: float = 0.0                # EMA decay of the weights (e.g. 0.999); 0: off
    clip_grad: float = 0.0          # largest L2 norm of one step's gradients (all parameters); 0: off
    time_budget_s: float | None = None  # stop (and save) after this many seconds of this process
    stop_at: float | None = None    # stop (and save) once the clock passes this Unix time (a queue's deadline)
    threads: int | None = None
    log_every: int = 10
    # Budget fields recorded as these words instead of their values: a fine-tune's folders are the server's.
    recorded_as: dict[str, str] | None = None


@dataclass
class TrainResult:
    status: str                      # "finished", "cancelled" or "time budget"
    iteration: int
    out: Path
    best_psnr: float | None
    history: list[dict] = field(default_factory=list)


class PatchSampler:
    """Random aligned (LR, HR) patches with flips and 90-degree rotations, from a seeded generator."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]], scale: int, patch: int, seed: int,
                 device: torch.device | str = "cpu") -> None:
        # On a GPU the whole uint8 training set lives there: cropping is slicing, so the GPU never waits.
        self.pairs = [(torch.from_numpy(np.array(hr)).permute(2, 0, 1).to(device),
                       torch.from_numpy(np.array(lr)).permute(2, 0, 1).to(device)) for hr, lr in pairs]
        self.scale, self.patch = scale, patch
        self.generator = torch.Generator().manual_seed(seed)

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        lrs, hrs = [], []
        p, s = self.patch, self.scale
        for _ in range(batch):
            hr, lr = self.pairs[self._randint(len(self.pairs))]
            y, x = self._randint(lr.shape[1] - p + 1), self._randint(lr.shape[2] - p + 1)
            lr_patch = lr[:, y:y + p, x:x + p]
            hr_patch = hr[:, y * s:(y + p) * s, x * s:(x + p) * s]
            flips = torch.randint(2, (3,), generator=self.generator).tolist()
            if flips[0]:
                lr_patch, hr_patch = lr_patch.flip(-1), hr_patch.flip(-1)
            if flips[1]:
                lr_patch, hr_patch = lr_patch.flip(-2), hr_patch.flip(-2)
            if flips[2]:
                lr_patch, hr_patch = lr_patch.transpose(-1, -2), hr_patch.transpose(-1, -2)
            lrs.append(lr_patch)
            hrs.append(hr_patch)
        return torch.stack(lrs).float().div_(255), torch.stack(hrs).float().div_(255)


def weight_average(model: nn.Module, decay: float) -> AveragedModel:
    """The exponential moving average of ``model``'s weights (and buffers) that a run with ``--ema`` validates
    and saves."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def learning_rate(config: TrainConfig, iteration: int) -> float:
    halvings = sum(iteration >= round(f * config.iters) for f in config.lr_halve_at)
    return config.lr * 0.5 ** halvings


ImageSource = str | Path | list[Path]  # a folder, or the files of a held-out split


def data_sources(data: str | Path, val: str | Path | None, val_holdout: int) -> tuple[ImageSource, ImageSource]:
    """(training, validation) images: the folder ``val`` when given, else every ``val_holdout``-th image of
    ``data`` held out (a run's recorded settings rebuild the same split)."""
    if val:
        return data, val
    return split_holdout(list_images(data), val_holdout)


def load_validation(source: ImageSource, scale: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Whole validation images as (HR, LR) pairs; an image needs only a few LR pixels a side, not a patch."""
    return load_pairs(source, scale, 4, "validation")


@torch.inference_mode()
def validate(model: nn.Module, pairs: list[tuple[np.ndarray, np.ndarray]], scale: int,
             device: torch.device) -> dict:
    """Y-channel PSNR/SSIM (border = scale) and L1 loss on whole validation images."""
    was_training = model.training
    model.eval()
    outputs, losses = [], []
    for hr, lr in pairs:
        out = model(image_to_tensor(lr).to(device).contiguous(memory_format=torch.channels_last)).float().cpu()
        losses.append(float(F.l1_loss(out, image_to_tensor(hr))))
        outputs.append(tensor_to_image(out))
    model.train(was_training)
    scores = mean_scores(outputs, [hr for hr, _ in pairs], scale)
    return {"val_psnr": scores["psnr"], "val_ssim": scores["ssim"], "val_loss": float(np.mean(losses))}


def _optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names and bytes: safetensors has no checksum, and flipped bytes would otherwise load."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_train_state(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     sampler: PatchSampler, iteration: int, extra: dict, ema: AveragedModel | None = None) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    optim_tensors, optim_meta = _optimizer_to_tensors(optimizer)
    tensors.update(optim_tensors)
    tensors["rng.sampler"] = sampler.generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"iteration": iteration, "optimizer": optim_meta, "sha256": _digest(tensors), **extra}
    atomic_write(out / STATE_NAME, lambda tmp: save_file(tensors, tmp, metadata={"state": json.dumps(meta)}))


def _out_of_time(config: TrainConfig, t0: float) -> bool:
    return ((config.time_budget_s is not None and time.perf_counter() - t0 >= config.time_budget_s)
            or (config.stop_at is not None and time.time() >= config.stop_at))


def saved_state(out: str | Path) -> dict | None:
    """What the training state saved in ``out`` records (``iteration``, ``wall_time_s``, ``config``, ...), read
    without its tensors and unchecked; None where none is readable."""
    try:
        with safe_open(str(Path(out) / STATE_NAME), framework="pt") as f:
            meta = json.loads(f.metadata()["state"])
        return meta if isinstance(meta, dict) and isinstance(meta.get("iteration"), int) else None
    except (SafetensorError, OSError, KeyError, TypeError, ValueError):
        return None


def _damaged(path: Path, why: str) -> TrainStateError:
    return TrainStateError(f"{path}: damaged training state ({why}); continue from the last checkpoint with "
                           f"--init {path.parent / 'last'} --out NEW_FOLDER, or start over with --force")


def load_train_state(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     sampler: PatchSampler, ema: AveragedModel | None = None) -> dict:
    """Restore a run; ``TrainStateError`` (one line, naming the file) for a missing, truncated or altered state."""
    path = out / STATE_NAME
    if not path.exists():
        raise TrainStateError(f"{path}: no training state to resume; run without --resume to start a new run")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["state"])
        tensors = load_file(str(path))
    except (SafetensorError, OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise _damaged(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    if meta.get("sha256") != _digest(tensors):
        raise _damaged(path, "checksum mismatch")
    if (ema is not None) != any(k.startswith("ema.") for k in tensors):
        raise TrainStateError(f"{path}: the run was {'not ' if ema is not None else ''}trained with --ema; "
                              "resume with the same --ema")
    try:
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        if ema is not None:
            ema.load_state_dict({k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")})
    except RuntimeError as exc:
        raise TrainStateError(f"{path}: holds another architecture than --model ({str(exc).splitlines()[0]})") from None
    _optimizer_from_tensors(optimizer, tensors, meta["optimizer"])
    sampler.generator.set_state(tensors["rng.sampler"])
    torch.set_rng_state(tensors["rng.torch"])
    return meta


def _truncate_log(out: Path, iteration: int) -> None:
    """On resume, drop log records past the saved state: a killed run may have logged beyond it.

    A partial last line (a kill while writing it) is dropped; a damaged earlier line is an error naming it.
    """
    path = out / "log.jsonl"
    if not path.exists():
        return
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    kept = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                log.warning("%s: dropped a partial last line (the run was stopped while writing it)", path)
                break
            raise TrainStateError(f"{path}: line {number} is not JSON; delete that line to resume, "
                                  "or start over with --force") from None
        if record.get("iteration", 0) <= iteration:
            kept.append(line)
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(f"{line}\n" for line in kept)))


def _grad_norm(model: nn.Module) -> float | None:
    """The L2 norm of the last step's gradients (already unscaled: ``GradScaler.step`` unscales in place), logged
    beside the loss so that a loss spike can be told from a gradient blow-up before it."""
    norms = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return _finite(float(torch.stack(norms).norm()) if norms else 0.0)  # None: an fp16 step the scaler skipped


def _weights_finite(model: nn.Module) -> bool:
    """Whether every weight is a number: a finite loss can still back-propagate an inf or NaN gradient, which
    the optimizer writes into the weights, and the loss check alone would then save them."""
    return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no inf


def _append_log(out: Path, record: dict) -> None:
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" is bf16 where the hardware computes it natively, else fp32.

    Measured here (``python -m benchmarks.calibrate``): bf16 autocast reaches the same validation PSNR as
    fp32 (within 0.01 dB after 2,000 iterations) in about half the CPU time on a CPU with avx512_bf16;
    where bf16 is emulated it would be slower, hence the check.
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap way to tell, so the safe choice
        return "fp32"
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "fp32"


def _resume_key(config: TrainConfig) -> dict:
    """What a resumed run must share with the saved one (device, threads and precision may change)."""
    return {"model": config.model, "init": config.init, "iters": config.iters, "batch": config.batch,
            "patch": config.patch, "lr": config.lr, "lr_halve_at": list(config.lr_halve_at), "seed": config.seed,
            "val": config.val, "val_holdout": config.val_holdout, "ema": config.ema,
            # Only when on: states saved before the option existed resume unchanged.
            **({"clip_grad": config.clip_grad} if config.clip_grad else {})}


def _recorded_training(out: Path) -> dict:
    """The budget a state's checkpoints (saved with it) record: where a state from before ``precisions`` or
    ``devices`` were recorded learns what it trained in; {} where none says."""
    for sub in ("last", "best"):
        try:
            return dict(read_config(out / sub / CONFIG_NAME)["training"])
        except (CheckpointError, OSError, KeyError, TypeError, ValueError):
            continue
    return {}


def device_label(device: str, threads: int | None) -> str:
    """What trained, in words, as a budget's device history names it: a GPU's name, or "cpu (N threads)"."""
    if device != "cpu":
        return device
    return f"cpu ({threads} thread{'s' * (threads != 1)})" if threads else "cpu"


def _build_model(config: TrainConfig) -> nn.Module:
    if config.init:
        model = load_model(config.init, source=config.init_source)  # the one loader: names, folders, Hub, bundled
        if config.model and config.model != model.config["model"]:
            raise ValueError(f"--init {config.init} is a {model.config['model']}, not {config.model}")
        return model
    if not config.model:
        raise ValueError("give --model (or --init to fine-tune an existing model)")
    return create_model(config.model, **options_taken(config.model, {"descriptor_norm": config.descriptor_norm}))


def train(config: TrainConfig, progress: Callable[[dict], None] | None = None,
          stop: threading.Event | None = None) -> TrainResult:
    """Train (or fine-tune, or resume) as ``config`` says.

    ``progress`` receives dicts: {"event": "step", "iteration", "loss", "lr", "it_per_s"}
    and {"event": "validation", ...}. Setting ``stop`` saves the state and returns
    ``status="cancelled"`` after the current iteration.
    """
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = resolve_device(config.device)
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    if device.type == "cuda" and distributed:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.descriptor_norm not in DESCRIPTOR_NORMS:
        raise ValueError(f"descriptor_norm must be one of {DESCRIPTOR_NORMS}")
    if config.iters < 1 or config.batch < 1 or config.patch < 4:
        raise ValueError("iters and batch must be positive and patch at least 4")
    if config.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {config.precision!r}")
    precision = resolve_precision(config.precision, device)
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs CUDA; use bf16 on CPU")
    if rank == 0 and precision == "bf16" and resolve_precision("auto", device) != "bf16":
        log.warning("bf16 is emulated on this %s, far slower than fp32 (17x for tiny on an AVX2 CPU); "
                    "--precision auto trains in fp32 here", "GPU" if device.type == "cuda" else "CPU")
    if not 0 <= config.ema < 1:
        raise ValueError(f"ema must be a decay in [0, 1), got {config.ema}")
    if not (math.isfinite(config.clip_grad) and config.clip_grad >= 0):
        raise ValueError(f"clip_grad must be a norm >= 0 (0: off), got {config.clip_grad}")

    # Everything that can fail on input fails here, before any training work.
    torch.manual_seed(config.seed)
    model = _build_model(config)
    scale = model.config["scale"]
    train_source, val_source = data_sources(config.data, config.val, config.val_holdout)
    val_description = (str(config.val) if config.val else
                       f"{config.data}: every {config.val_holdout}th image held out ({len(val_source)} images)")
    train_pairs = load_pairs(train_source, scale, config.patch, "training")
    val_pairs = load_validation(val_source, scale) if val_source else []
    if config.val_limit:
        val_pairs = val_pairs[:config.val_limit]
    if not val_pairs:  # e.g. a fine-tune on under val_holdout photos: nothing held out, nothing to choose by
        log.warning("no validation images (%s): best/ will be the last weights, not chosen by validation; "
                    "give --val DIR or a smaller --val-holdout", val_description)

    out = Path(config.out)
    state_path = out / STATE_NAME
    if not config.resume and not config.force and (state_path.exists() or (out / "log.jsonl").exists()):
        raise TrainStateError(f"{out} already holds a training run; --resume to continue it, "
                              "or --force to start over")
    out.mkdir(parents=True, exist_ok=True)
    model.to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    sampler = PatchSampler(train_pairs, scale, config.patch, config.seed + 1000 * rank, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    ema = weight_average(model, config.ema) if config.ema else None
    shipped = ema.module if ema is not None else model  # what is validated and saved

    start, best_psnr, history, wall_before, precisions, devices = 0, None, [], 0.0, [], []
    if config.resume:
        meta = load_train_state(out, model, optimizer, sampler, ema)
        start, best_psnr, wall_before = meta["iteration"], meta.get("best_psnr"), meta.get("wall_time_s", 0.0)
        recorded = {} if meta.get("precisions") and meta.get("devices") else _recorded_training(out)
        # States from before these records take them from their checkpoints.
        precisions = meta.get("precisions") or [[0, recorded.get("precision")]]
        devices = meta.get("devices") or [[0, device_label(recorded["device"], recorded.get("threads"))
                                           if recorded.get("device") else None]]
        saved_key, key = meta.get("config"), _resume_key(config)
        if saved_key is not None and saved_key != key:
            differ = ", ".join(f"{k} {saved_key.get(k)!r} -> {key.get(k)!r}"  # either side may lack a key
                               for k in dict.fromkeys([*saved_key, *key]) if saved_key.get(k) != key.get(k))
            raise TrainStateError(f"{state_path}: the saved run differs ({differ}); resume with the same settings")
        if rank:  # the state holds rank 0's sampler: the other ranks draw their own patches again
            sampler.generator.manual_seed(config.seed + 1000 * rank + start)
        if rank == 0:
            _truncate_log(out, start)
            log.info("resumed %s at iteration %d", out, start)
    elif rank == 0:
        (out / "log.jsonl").unlink(missing_ok=True)

    if not precisions or precisions[-1][1] != precision:
        precisions.append([start, precision])  # a run resumed on another machine may change precision
    device_name = str(device) if device.type == "cpu" else torch.cuda.get_device_name(device)
    here = device_label(device_name, torch.get_num_threads())
    if not devices or devices[-1][1] != here:
        devices.append([start, here])  # ... or device, or threads
    train_model = nn.parallel.DistributedDataParallel(model) if distributed else model
    amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    budget = {
        "iterations": config.iters, "batch": config.batch, "patch": config.patch, "lr": config.lr,
        "lr_halve_at": list(config.lr_halve_at), "seed": config.seed, "loss": "l1",
        "data": str(config.data), "train_images": len(train_pairs), "val": val_description,
        "val_images": len(val_pairs), "device": device_name,
        "world_size": world, "threads": torch.get_num_threads(),
        **({"devices": devices} if len(devices) > 1 else {}),
        **({"precision": precision} if len(precisions) == 1 else {"precision": "mixed", "precisions": precisions}),
        "ema": config.ema or None, "init": config.init, "torch": torch.__version__,
        **({"clip_grad": config.clip_grad} if config.clip_grad else {}),  # unclipped budgets read as before
        **(config.recorded_as or {}),
    }

    def checkpoint_metadata(iteration: int, wall: float, validation: dict | None) -> dict:
        return {"training": {**budget, "iterations_done": iteration, "wall_time_s": round(wall, 1)},
                "validation": validation}

    t0, status, iteration = time.perf_counter(), "finished", start
    window_start, window_iter = time.perf_counter(), start
    best_validation = None
    # Read on the host only where the weights are used (log, validation, save, stop), or in the per-step
    # all-reduce of a distributed run: a host read every step would stall a GPU.
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    for iteration in range(start, config.iters):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, iteration)
        lr_batch, hr_batch = sampler.sample(config.batch)
        lr_batch = lr_batch.to(device).contiguous(memory_format=torch.channels_last)
        hr_batch = hr_batch.to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = F.l1_loss(train_model(lr_batch).float(), hr_batch)
        nonfinite |= ~torch.isfinite(loss.detach())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        grad_norm = None  # the norm before clipping, the one a spike shows in (a tensor: read only when logged)
        if config.clip_grad:
            scaler.unscale_(optimizer)  # clip the true gradients, not fp16's scaled ones
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema.update_parameters(model)
        done = iteration + 1
        wall = wall_before + time.perf_counter() - t0
        # The steps that read the weights (on rank 0): each condition written once, for the check and the work.
        logs = done % config.log_every == 0 or done == config.iters
        validates = bool(val_pairs) and (done % config.val_every == 0 or done == config.iters)
        saves = done % config.save_every == 0 or done == config.iters
        if distributed:
            # Every rank stops, or fails, at the same step, decided before rank 0 logs, validates or saves: ranks
            # share gradients, so one rank's blow-up is every rank's, and one rank stopping alone would leave the
            # others waiting. (A per-step host read, as the barrier this replaces was.)
            cancelled, out_of_time = stop is not None and stop.is_set(), _out_of_time(config, t0)
            flags = torch.stack([torch.tensor(float(cancelled or out_of_time), device=device), nonfinite.float()])
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            if bool(flags[1]):
                raise TrainingDiverged(done)
            out_of_time = bool(flags[0]) and not cancelled
            if (logs or validates or saves or bool(flags[0])) and not _weights_finite(model):
                raise TrainingDiverged(done)  # every rank holds the same weights, so every rank raises here
        elif (logs or validates or saves) and (bool(nonfinite) or not _weights_finite(model)):
            raise TrainingDiverged(done)  # before anything logs, validates or saves broken weights

        if rank == 0 and logs:
            speed = (done - window_iter) / max(time.perf_counter() - window_start, 1e-9)
            window_start, window_iter = time.perf_counter(), done
            record = {"event": "step", "iteration": done, "loss": loss.item(), "lr": learning_rate(config, iteration),
                      "grad_norm": _grad_norm(model) if grad_norm is None else _finite(float(grad_norm)),
                      "it_per_s": speed, "wall_time_s": wall}
            _append_log(out, record)
            if progress:
                progress(record)

        if rank == 0 and validates:
            record = {"event": "validation", "iteration": done, **validate(shipped, val_pairs, scale, device),
                      **gate_summary(gate_report(shipped)), "wall_time_s": wall}
            _append_log(out, record)
            history.append(record)
            if progress:
                progress(record)
            if best_psnr is None or record["val_psnr"] > best_psnr:
                best_psnr = record["val_psnr"]
                best_validation = {k: record[k] for k in ("iteration", "val_psnr", "val_ssim", "val_loss")}
                save_checkpoint(out / "best", shipped, checkpoint_metadata(done, wall, best_validation))

        if not distributed:  # a stop asked for while this step logged counts at once
            cancelled, out_of_time = stop is not None and stop.is_set(), _out_of_time(config, t0)
            if (cancelled or out_of_time) and (bool(nonfinite) or not _weights_finite(model)):
                raise TrainingDiverged(done)
        if rank == 0 and (saves or cancelled or out_of_time):
            save_checkpoint(out / "last", shipped, checkpoint_metadata(done, wall, best_validation))
            save_train_state(out, model, optimizer, sampler, done, {"best_psnr": best_psnr, "wall_time_s": wall,
                                                                    "config": _resume_key(config),
                                                                    "precisions": precisions, "devices": devices}, ema)
        if cancelled or out_of_time:
            status = "cancelled" if cancelled else "time budget"
            break

    iteration = min(config.iters, iteration + 1) if config.iters > start else start
    if rank == 0 and not val_pairs and not (out / "best").exists():
        save_checkpoint(out / "best", shipped, checkpoint_metadata(iteration, wall_before + time.perf_counter() - t0, None))
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return TrainResult(status, iteration, out, best_psnr, history)


def main(argv: list[str] | None = None) -> int:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="python -m kaldn.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model name, e.g. tiny-kdsconv-det-x4")
    parser.add_argument("--data", required=True, help="folder of HR training images")
    parser.add_argument("--val", help="folder of HR validation images (default: hold out part of --data)")
    parser.add_argument("--val-holdout", type=int, default=defaults.val_holdout,
                        help="without --val: every Nth image of --data validates instead of training")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--iters", type=int, default=defaults.iters)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--patch", type=int, default=defaults.patch, help="LR patch side")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--lr-halve-at", type=float, nargs="*", default=list(defaults.lr_halve_at),
                        help="fractions of --iters where the learning rate halves")
    parser.add_argument("--init", help="model name or checkpoint folder to fine-tune from")
    add_source_option(parser, "--init-source", "an --init model name")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/train_state.safetensors")
    parser.add_argument("--force", action="store_true", help="start over in an OUT that already holds a run")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default=defaults.device, help="auto, cpu, cuda")
    parser.add_argument("--val-every", type=int, default=defaults.val_every)
    parser.add_argument("--save-every", type=int, default=defaults.save_every)
    parser.add_argument("--val-limit", type=int, help="validate on the first N images only")
    parser.add_argument("--descriptor-norm", default=defaults.descriptor_norm, choices=DESCRIPTOR_NORMS)
    parser.add_argument("--precision", default=defaults.precision, choices=PRECISIONS,
                        help="auto (default): bf16 where the hardware has it natively, else fp32; bf16: autocast "
                             "with fp32 master weights (CPU or CUDA); fp16: CUDA only")
    parser.add_argument("--ema", type=float, default=defaults.ema, help="EMA decay of the saved weights (0: off)")
    parser.add_argument("--clip-grad", type=float, default=defaults.clip_grad,
                        help="largest L2 norm of one step's gradients (0: off)")
    parser.add_argument("--time-budget", dest="time_budget_s", type=float, help="stop and save after S seconds")
    parser.add_argument("--stop-at", type=float, help="stop and save once the clock passes this Unix time")
    parser.add_argument("--threads", type=int, help="CPU threads")
    args = parser.parse_args(argv)
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k != "lr_halve_at"},
                         lr_halve_at=tuple(args.lr_halve_at))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    from tqdm import tqdm
    bar = None
    rank0 = int(os.environ.get("RANK", "0")) == 0

    def report(event: dict) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=config.iters, initial=event["iteration"] - (1 if event["event"] == "step" else 0),
                       unit="it", dynamic_ncols=True, disable=not rank0)
        if event["event"] == "step":
            bar.update(event["iteration"] - bar.n)
            bar.set_postfix(loss=f"{event['loss']:.4f}", lr=f"{event['lr']:.1e}")
        else:
            bar.write(f"iter {event['iteration']}: val PSNR {event['val_psnr']:.3f} dB  "
                      f"SSIM {event['val_ssim']:.4f}  loss {event['val_loss']:.4f}")
    try:
        result = train(config, progress=report)
    except (TrainingDataError, ValueError, FileNotFoundError) as exc:  # TrainingDiverged too: a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if bar:
        bar.close()
    if rank0:
        best = f", best val PSNR {result.best_psnr:.3f} dB" if result.best_psnr is not None else ""
        print(f"{result.status} at iteration {result.iteration}{best}; checkpoints in {result.out}/best and /last")
    return 0


if __name__ == "__main__":
    sys.exit(main())
