"""Training and fine-tuning: one code path for the CLI, the app's fine-tune tab and the model zoo.

    python -m kaldn.train --model tiny-kdsconv-det-x4 --data ../shared/data/train \
        --val ../shared/data/val --iters 2000 --out runs/kdsconv-det

Recipe (paper 001, scaled to the budget): random HR crops with flips and 90-degree
rotations, LR made by the project's MATLAB ``imresize``, L1 loss, Adam with the
learning rate halved at fixed fractions of the run, validation PSNR/SSIM on the
Y channel every ``val_every`` iterations with the best checkpoint kept.

Output folder:
    last/, best/             checkpoints (model.safetensors + config.json)
    train_state.safetensors  weights, optimizer and RNG state for --resume (one file: atomic)
    log.jsonl                one JSON object per log / validation event, for plots
"""

from __future__ import annotations

import argparse
import json
import logging
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
from safetensors.torch import load_file, save_file
from torch import nn

from .attention import gate_report, gate_summary
from .checkpoint import atomic_write, save_checkpoint
from .images import ImageError, image_to_tensor, load_image, tensor_to_image
from .inference import resolve_device
from .layers import DEFAULT_DESCRIPTOR_NORM, DESCRIPTOR_NORMS
from .metrics import psnr_y, ssim_y
from .models import create_model
from .resize import make_lr

log = logging.getLogger("kaldn.train")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
STATE_NAME = "train_state.safetensors"


class TrainingDataError(ValueError):
    """A data folder that cannot be trained on; raised before any work starts."""


@dataclass
class TrainConfig:
    model: str | None = None        # model name; may be omitted with init (taken from it)
    data: str = ""                  # folder of HR images
    out: str = "runs/train"
    val: str | None = None          # folder of HR images for validation
    iters: int = 1000
    batch: int = 16
    patch: int = 48                 # LR patch side; HR crops are patch * scale
    lr: float = 1e-3
    lr_halve_at: tuple[float, ...] = (0.5, 0.7, 0.85, 0.95)  # fractions of iters where lr halves (~cosine)
    seed: int = 0
    device: str = "auto"
    init: str | None = None         # model name or checkpoint directory to fine-tune from
    resume: bool = False
    val_every: int = 250
    save_every: int = 100           # resume-state interval
    val_limit: int | None = None    # validate on the first N images only
    descriptor_norm: str = DEFAULT_DESCRIPTOR_NORM
    amp: str | None = None          # "bf16" / "fp16" mixed precision on CUDA
    threads: int | None = None
    log_every: int = 10


@dataclass
class TrainResult:
    status: str                      # "finished" or "cancelled"
    iteration: int
    out: Path
    best_psnr: float | None
    history: list[dict] = field(default_factory=list)


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise TrainingDataError(f"{folder}: no such folder")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_pairs(folder: str | Path, scale: int, min_lr_side: int, purpose: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(HR, LR) uint8 pairs, LR by ``imresize``; unusable files skipped with one warning each."""
    paths = list_images(folder)
    pairs, skipped = [], 0
    for path in paths:
        try:
            image = load_image(path)[..., :3]
        except ImageError as exc:
            log.warning("skipping %s: %s", path, exc)
            skipped += 1
            continue
        if image.dtype != np.uint8:
            image = (image.astype(np.float64) / 257).round().astype(np.uint8)
        if min(image.shape[:2]) // scale < min_lr_side:
            log.warning("skipping %s: %dx%d is smaller than a %d-pixel patch at x%d",
                        path, image.shape[1], image.shape[0], min_lr_side * scale, scale)
            skipped += 1
            continue
        pairs.append(make_lr(image, scale))
    if not pairs:
        raise TrainingDataError(
            f"{folder}: no usable {purpose} image ({len(paths)} image files found, {skipped} skipped; "
            f"need PNG/JPEG images at least {min_lr_side * scale} pixels on each side)")
    if skipped:
        log.warning("%s: used %d images, skipped %d", folder, len(pairs), skipped)
    return pairs


class PatchSampler:
    """Random aligned (LR, HR) patches with flips and 90-degree rotations, from a seeded generator."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]], scale: int, patch: int, seed: int) -> None:
        self.pairs = [(torch.from_numpy(np.array(hr)).permute(2, 0, 1), torch.from_numpy(np.array(lr)).permute(2, 0, 1))
                      for hr, lr in pairs]
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


def learning_rate(config: TrainConfig, iteration: int) -> float:
    halvings = sum(iteration >= round(f * config.iters) for f in config.lr_halve_at)
    return config.lr * 0.5 ** halvings


@torch.inference_mode()
def validate(model: nn.Module, pairs: list[tuple[np.ndarray, np.ndarray]], scale: int,
             device: torch.device) -> dict:
    """Y-channel PSNR/SSIM (border = scale) and L1 loss on whole validation images."""
    was_training = model.training
    model.eval()
    psnrs, ssims, losses = [], [], []
    for hr, lr in pairs:
        out = model(image_to_tensor(lr).to(device).contiguous(memory_format=torch.channels_last)).float().cpu()
        target = image_to_tensor(hr)
        losses.append(float(F.l1_loss(out, target)))
        sr = tensor_to_image(out)
        psnrs.append(psnr_y(sr, hr, scale))
        ssims.append(ssim_y(sr, hr, scale))
    model.train(was_training)
    return {"val_psnr": float(np.mean(psnrs)), "val_ssim": float(np.mean(ssims)), "val_loss": float(np.mean(losses))}


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


def save_train_state(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     sampler: PatchSampler, iteration: int, extra: dict) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optim_tensors, optim_meta = _optimizer_to_tensors(optimizer)
    tensors.update(optim_tensors)
    tensors["rng.sampler"] = sampler.generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"iteration": iteration, "optimizer": optim_meta, **extra}
    atomic_write(out / STATE_NAME, lambda tmp: save_file(tensors, tmp, metadata={"state": json.dumps(meta)}))


def load_train_state(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     sampler: PatchSampler) -> dict:
    from safetensors import safe_open
    path = out / STATE_NAME
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["state"])
    tensors = load_file(str(path))
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    _optimizer_from_tensors(optimizer, tensors, meta["optimizer"])
    sampler.generator.set_state(tensors["rng.sampler"])
    torch.set_rng_state(tensors["rng.torch"])
    return meta


def _truncate_log(out: Path, iteration: int) -> None:
    """On resume, drop log records past the saved state: a killed run may have logged beyond it."""
    path = out / "log.jsonl"
    if path.exists():
        kept = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["iteration"] <= iteration]
        atomic_write(path, lambda tmp: Path(tmp).write_text("".join(f"{line}\n" for line in kept)))


def _append_log(out: Path, record: dict) -> None:
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def _build_model(config: TrainConfig) -> nn.Module:
    if config.init:
        from .hub import load_model  # the one loader: names, directories, Hub, bundled
        model = load_model(config.init)
        if config.model and config.model != model.config["model"]:
            raise ValueError(f"--init {config.init} is a {model.config['model']}, not {config.model}")
        return model
    if not config.model:
        raise ValueError("give --model (or --init to fine-tune an existing model)")
    return create_model(config.model, descriptor_norm=config.descriptor_norm)


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

    # Everything that can fail on input fails here, before any training work.
    torch.manual_seed(config.seed)
    model = _build_model(config)
    scale = model.config["scale"]
    train_pairs = load_pairs(config.data, scale, config.patch, "training")
    val_pairs = load_pairs(config.val, scale, 4, "validation") if config.val else []
    if config.val_limit:
        val_pairs = val_pairs[:config.val_limit]

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    model.to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    sampler = PatchSampler(train_pairs, scale, config.patch, config.seed + 1000 * rank)

    start, best_psnr, history, wall_before = 0, None, [], 0.0
    if config.resume and (out / STATE_NAME).exists():
        meta = load_train_state(out, model, optimizer, sampler)
        start, best_psnr, wall_before = meta["iteration"], meta.get("best_psnr"), meta.get("wall_time_s", 0.0)
        if rank == 0:
            _truncate_log(out, start)
            log.info("resumed %s at iteration %d", out, start)
    elif rank == 0:
        (out / "log.jsonl").unlink(missing_ok=True)

    train_model = nn.parallel.DistributedDataParallel(model) if distributed else model
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[config.amp]
    use_amp = amp_dtype is not None and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    budget = {
        "iterations": config.iters, "batch": config.batch, "patch": config.patch, "lr": config.lr,
        "lr_halve_at": list(config.lr_halve_at), "seed": config.seed, "loss": "l1",
        "data": str(config.data), "train_images": len(train_pairs), "val": config.val,
        "val_images": len(val_pairs), "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "world_size": world, "threads": torch.get_num_threads(), "amp": config.amp if use_amp else None,
        "init": config.init, "torch": torch.__version__,
    }

    def checkpoint_metadata(iteration: int, wall: float, validation: dict | None) -> dict:
        return {"training": {**budget, "iterations_done": iteration, "wall_time_s": round(wall, 1)},
                "validation": validation}

    t0, status, iteration = time.perf_counter(), "finished", start
    window_start, window_iter = time.perf_counter(), start
    best_validation = None
    for iteration in range(start, config.iters):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, iteration)
        lr_batch, hr_batch = sampler.sample(config.batch)
        lr_batch = lr_batch.to(device).contiguous(memory_format=torch.channels_last)
        hr_batch = hr_batch.to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            loss = F.l1_loss(train_model(lr_batch).float(), hr_batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at iteration {iteration}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        done = iteration + 1
        wall = wall_before + time.perf_counter() - t0

        if rank == 0 and (done % config.log_every == 0 or done == config.iters):
            speed = (done - window_iter) / max(time.perf_counter() - window_start, 1e-9)
            window_start, window_iter = time.perf_counter(), done
            record = {"event": "step", "iteration": done, "loss": loss.item(), "lr": learning_rate(config, iteration),
                      "it_per_s": speed, "wall_time_s": wall}
            _append_log(out, record)
            if progress:
                progress(record)

        if rank == 0 and val_pairs and (done % config.val_every == 0 or done == config.iters):
            record = {"event": "validation", "iteration": done, **validate(model, val_pairs, scale, device),
                      **gate_summary(gate_report(model)), "wall_time_s": wall}
            _append_log(out, record)
            history.append(record)
            if progress:
                progress(record)
            if best_psnr is None or record["val_psnr"] > best_psnr:
                best_psnr = record["val_psnr"]
                best_validation = {k: record[k] for k in ("iteration", "val_psnr", "val_ssim", "val_loss")}
                save_checkpoint(out / "best", model, checkpoint_metadata(done, wall, best_validation))

        cancelled = stop is not None and stop.is_set()
        if rank == 0 and (done % config.save_every == 0 or done == config.iters or cancelled):
            save_checkpoint(out / "last", model, checkpoint_metadata(done, wall, best_validation))
            save_train_state(out, model, optimizer, sampler, done, {"best_psnr": best_psnr, "wall_time_s": wall})
        if distributed:
            dist.barrier()
        if cancelled:
            status = "cancelled"
            break

    iteration = min(config.iters, iteration + 1) if config.iters > start else start
    if rank == 0 and not val_pairs and not (out / "best").exists():
        save_checkpoint(out / "best", model, checkpoint_metadata(iteration, wall_before + time.perf_counter() - t0, None))
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return TrainResult(status, iteration, out, best_psnr, history)


def main(argv: list[str] | None = None) -> int:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="python -m kaldn.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model name, e.g. tiny-kdsconv-det-x4")
    parser.add_argument("--data", required=True, help="folder of HR training images")
    parser.add_argument("--val", help="folder of HR validation images")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--iters", type=int, default=defaults.iters)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--patch", type=int, default=defaults.patch, help="LR patch side")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--lr-halve-at", type=float, nargs="*", default=list(defaults.lr_halve_at),
                        help="fractions of --iters where the learning rate halves")
    parser.add_argument("--init", help="model name or checkpoint folder to fine-tune from")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/train_state.safetensors")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default=defaults.device, help="auto, cpu, cuda")
    parser.add_argument("--val-every", type=int, default=defaults.val_every)
    parser.add_argument("--save-every", type=int, default=defaults.save_every)
    parser.add_argument("--val-limit", type=int, help="validate on the first N images only")
    parser.add_argument("--descriptor-norm", default=defaults.descriptor_norm, choices=DESCRIPTOR_NORMS)
    parser.add_argument("--amp", choices=["bf16", "fp16"], help="mixed precision on CUDA")
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
    except (TrainingDataError, ValueError, FileNotFoundError) as exc:
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
