"""Fine-tuning from the app: one background job at a time, followed as a stream of updates.

:class:`FineTuneManager` checks the request, writes the user's images as 8-bit PNGs, runs
:func:`kaldn.train.train` in a thread (validating on the same images, so the curve shows how well the
model fits them) and adds the result to a :class:`SessionModels`, where the comparison and the
inspection views find it. :meth:`FineTuneManager.run` yields :class:`FineTuneUpdate` objects with the
status text and the curves, so a UI only displays them.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, read_config
from .data import load_pairs
from .display import centre_crop, to_display
from .errors import BusyError, UserError, quoted
from .hub import available_models, load_model
from .images import ImageError, load_image, save_png
from .inference import resolve_device
from .models import parse_model_name, variant, variant_of
from .session_models import SessionModel, SessionModels
from .settings import AppSettings
from .train import TrainConfig, train, validate
from .workdirs import instance_root

log = logging.getLogger("kaldn.finetune")

__all__ = ["FineTuneError", "FineTuneJob", "FineTuneManager", "FineTuneSettings", "FineTuneUpdate",
           "base_choices", "default_base", "prepare_finetune_data"]


class FineTuneError(UserError):
    """Training itself failed; the message says why."""


@dataclass
class FineTuneUpdate:
    """One step of a job as the user sees it."""

    status: str                                  # Markdown
    history: list[dict]                          # the "step" and "validation" events so far
    iteration: int
    total: int
    notes: list[str] = field(default_factory=list)     # worth a pop-up each (first update only)
    downloads: list[str] | None = None           # the final update: the new model's files
    entry: SessionModel | None = None            # the final update: the new model

    def loss_curve(self) -> dict[str, list]:
        steps = [h for h in self.history if h["event"] == "step"]
        return {"iteration": [h["iteration"] for h in steps], "loss": [h["loss"] for h in steps]}

    def psnr_curve(self) -> dict[str, list]:
        vals = [h for h in self.history if h["event"] == "validation"]
        return {"iteration": [h["iteration"] for h in vals], "PSNR (dB)": [h["val_psnr"] for h in vals]}


@dataclass
class FineTuneSettings:
    base: str                       # model name or checkpoint dir
    iters: int
    lr: float
    batch: int = 8
    patch: int = 32
    device: str = "auto"
    seed: int = 0

    @classmethod
    def from_form(cls, base: Any, iters: Any, lr: Any, batch: Any, patch: Any, device: str = "auto"
                  ) -> "FineTuneSettings":
        """Settings from form values (numbers may come as strings or floats); a :class:`UserError` otherwise."""
        if not base:
            raise UserError("Choose a base model (no bundled checkpoint found).")
        try:
            return cls(base=str(base), iters=int(iters), lr=float(lr), batch=int(batch), patch=int(patch),
                       device=device)
        except (TypeError, ValueError):
            raise UserError(f"Iterations, learning rate, batch and patch must be numbers, got {quoted(iters)}, "
                            f"{quoted(lr)}, {quoted(batch)}, {quoted(patch)}.") from None


# Validation runs a whole image through the model in one piece: a 2048x2048 upload would need several GB for
# the larger bases, so a job validates on centre crops of at most this many LR pixels per side.
VAL_LR_SIDE = 128
# What a job may ask for (inclusive); the app's controls offer the same ranges.
LR_RANGE = (1e-6, 1e-2)
BATCH_RANGE = (1, 32)
PATCH_RANGE = (16, 96)  # LR pixels a side


def prepare_finetune_data(images: Sequence[Any], scale: int, patch: int, folder: str | Path,
                          max_pixels: int | None = None, max_total_pixels: int | None = None,
                          val_folder: str | Path | None = None) -> tuple[int, list[str], int]:
    """Check the user's HR images and write them as 8-bit RGB PNGs into ``folder``, and their centre crops of
    at most ``VAL_LR_SIDE * scale`` pixels per side into ``val_folder`` (when given).

    Images smaller than the training crop are skipped with a note. Returns
    (number written, notes, patch to use): the patch shrinks (down to 16 LR
    pixels) so that small uploads can still be used. More than ``max_total_pixels``
    in all is a :class:`UserError` (training memory grows with the images).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if val_folder is not None:
        Path(val_folder).mkdir(parents=True, exist_ok=True)
    notes, loaded, total = [], [], 0
    for i, source in enumerate(images):
        name = Path(str(source)).name if isinstance(source, (str, os.PathLike)) else f"image {i + 1}"
        try:
            img = load_image(source, max_pixels=max_pixels)
        except ImageError as exc:
            notes.append(f"Skipped {name}: {exc}")
            continue
        total += img.shape[0] * img.shape[1]
        if max_total_pixels is not None and total > max_total_pixels:
            raise UserError(f"The training images add up to more than {max_total_pixels:,} pixels, the limit on "
                            "this server (KALDN_FINETUNE_MAX_TOTAL_PIXELS): use fewer or smaller images.")
        rgb = to_display(img)[..., :3]
        loaded.append((name, rgb))
    if not loaded:
        raise UserError("No usable training image: " + (" ".join(notes) if notes else "upload some HR images."))
    smallest = min(min(rgb.shape[:2]) for _, rgb in loaded) // scale
    if smallest < patch:
        patch = max(16, smallest)
    written = 0
    for i, (name, rgb) in enumerate(loaded):
        if min(rgb.shape[:2]) // scale < patch:
            notes.append(f"Skipped {name}: {rgb.shape[1]}x{rgb.shape[0]} is smaller than the "
                         f"{patch * scale}-pixel training crop at x{scale}.")
            continue
        save_png(np.ascontiguousarray(rgb), folder / f"{i:03d}.png")
        if val_folder is not None:
            save_png(np.ascontiguousarray(centre_crop(rgb, VAL_LR_SIDE * scale)[0]), Path(val_folder) / f"{i:03d}.png")
        written += 1
    if written == 0:
        raise UserError(f"No usable training image: each needs at least {16 * scale} pixels per side at x{scale}. "
                           + " ".join(notes))
    return written, notes, patch


class FineTuneJob:
    """One training run in a background thread; ``events()`` yields its progress dicts."""

    def __init__(self, settings: FineTuneSettings, folder: Path, owner: str | None,
                 time_budget_s: float | None = None, client: str | None = None,
                 recorded: dict[str, str] | None = None, model_source: str = "auto") -> None:
        self.settings = settings
        self.model_source = model_source    # where a base named by model name loads from (kaldn.hub's sources)
        self.time_budget_s = time_budget_s  # wall-clock cap of the training itself: stops and saves
        self.folder = folder                # deleted when the registry forgets the model
        self.data = folder / "data"
        self.val = folder / "val"           # centre crops of the same images (VAL_LR_SIDE)
        self.out = folder / "run"
        self.owner = owner
        self.client = client                # its client's address (admission.client_key), None where unknown
        self.recorded = recorded            # budget fields its checkpoint records in words (TrainConfig.recorded_as)
        self.turn = client or owner         # who waits for the next turn: its client's address, else its session
        self.admitted = time.monotonic()    # a session that ended after this does not get the model
        self.abandoned = False              # nobody will use its files: deleted when its thread ends too
        self.stop = threading.Event()
        self.queue: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None
        self.result = None
        self.error: str | None = None
        self.started = time.time()

    def _run(self, release: Callable[[], None]) -> None:
        try:
            s = self.settings
            config = TrainConfig(data=str(self.data), val=str(self.val), out=str(self.out), init=s.base,
                                 iters=s.iters, batch=s.batch, patch=s.patch, lr=s.lr, seed=s.seed,
                                 device=s.device, time_budget_s=self.time_budget_s, val_every=max(10, s.iters // 10),
                                 save_every=max(50, s.iters), log_every=max(1, min(10, s.iters // 20)),
                                 recorded_as=self.recorded, init_source=self.model_source)
            # Iteration 0 of the curves: the base model on the same images.
            base = load_model(s.base, source=self.model_source)
            dev = resolve_device(s.device)
            pairs = load_pairs(self.val, base.config["scale"], 4, "validation")
            before = validate(base.to(dev), pairs, base.config["scale"], dev)
            self.queue.put({"event": "validation", "iteration": 0, **before})
            self.result = train(config, progress=self.queue.put, stop=self.stop)
        except (UserError, ImageError) as exc:  # a message meant for the user
            log.info("fine-tuning stopped: %s", exc)
            self.error = str(exc)
        except Exception:  # noqa: BLE001 - the details (paths, library internals) stay in the server log
            log.exception("fine-tuning failed")
            self.error = "an internal error stopped the training (the details are in the server log)."
        finally:
            release()
            self.queue.put({"event": "end"})

    def events(self, poll: float = 0.5) -> Iterator[dict]:
        """Progress dicts until the job ends; a ``{"event": "tick"}`` every ``poll`` seconds of silence."""
        while True:
            try:
                event = self.queue.get(timeout=poll)
            except queue.Empty:
                if self.thread is not None and not self.thread.is_alive() and self.queue.empty():
                    return
                yield {"event": "tick"}
                continue
            if event.get("event") == "end":
                return
            yield event

    def checkpoint_dir(self) -> Path | None:
        for sub in ("best", "last"):
            if (self.out / sub / WEIGHTS_NAME).is_file() and (self.out / sub / CONFIG_NAME).is_file():
                return self.out / sub
        return None


class FineTuneManager:
    """One fine-tuning job at a time for the whole process; finished models go to ``registry``.

    Caps (defaults from :class:`~kaldn.settings.AppSettings`, i.e. the ``KALDN_FINETUNE_*`` variables):
    iterations, a wall-clock ``time_budget_s`` per job (training stops and keeps its model), the number of
    images and their total pixels, and ``batch x patch^2`` LR pixels per step. Job folders live in a
    folder of this process (``root``, default ``<tmp>/kaldn-finetune/<pid>-<token>``); a job's folder is
    removed when the job fails or is abandoned, and with its model when the owner's models are dropped.
    """

    def __init__(self, registry: SessionModels, root: str | Path | None = None,
                 max_iters: int | None = None, time_budget_s: float | None = None,
                 max_images: int | None = None, max_total_pixels: int | None = None,
                 max_batch_pixels: int | None = None, turn_s: float | None = None,
                 model_source: str | None = None) -> None:
        d = AppSettings.from_env()
        self.registry = registry
        self.model_source = model_source or d.model_source  # the bases are the weights Compare shows
        self._base = Path(root) if root else None
        self.root = self._base  # set on first use (the per-process folder is made only when needed)
        self.max_iters = max_iters or d.finetune_max_iters
        self.time_budget_s = time_budget_s or d.finetune_time_budget_s
        self.max_images = max_images or d.finetune_max_images
        self.max_total_pixels = max_total_pixels or d.finetune_max_total_pixels
        self.max_batch_pixels = max_batch_pixels or d.finetune_max_batch_pixels
        # Fair turns: an owner whose job made someone else wait may not start the next one for turn_s seconds.
        self.turn_s = d.finetune_turn_s if turn_s is None else turn_s
        self._turn_after: dict[str, float] = {}   # owner -> when its next job may start
        self._waited = False                      # someone else was refused while the current job ran
        self._lock = threading.Lock()
        self.job: FineTuneJob | None = None
        self._count = itertools.count(1)

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def start(self, images: Sequence[Any], settings: FineTuneSettings, owner: str | None = None,
              max_pixels: int | None = None, client: str | None = None) -> tuple[FineTuneJob, list[str]]:
        """Validate, prepare the data and start training; raises BusyError / UserError / ImageError.

        Turns are taken by ``client`` (an address, :func:`kaldn.admission.client_key`) where known, else by
        ``owner`` (a session): a client's fresh session does not skip its turn.
        Returns the job and notes for the user (the first says what is trained on)."""
        if not isinstance(settings.iters, int) or not 1 <= settings.iters <= self.max_iters:
            raise UserError(f"Iterations must be between 1 and {self.max_iters} on this server "
                            f"(KALDN_FINETUNE_MAX_ITERS), got {settings.iters}.")
        if not (LR_RANGE[0] <= float(settings.lr) <= LR_RANGE[1]):
            raise UserError(f"The learning rate must be between {LR_RANGE[0]:g} and {LR_RANGE[1]:g}, "
                            f"got {settings.lr}.")
        if not BATCH_RANGE[0] <= settings.batch <= BATCH_RANGE[1]:
            raise UserError(f"The batch size must be between {BATCH_RANGE[0]} and {BATCH_RANGE[1]}, "
                            f"got {settings.batch}.")
        if not PATCH_RANGE[0] <= settings.patch <= PATCH_RANGE[1]:
            raise UserError(f"The patch size must be between {PATCH_RANGE[0]} and {PATCH_RANGE[1]} LR pixels, got "
                            f"{settings.patch}.")
        if settings.batch * settings.patch ** 2 > self.max_batch_pixels:
            raise UserError(f"Batch {settings.batch} x patch {settings.patch}x{settings.patch} is "
                            f"{settings.batch * settings.patch ** 2:,} LR pixels per step; the limit on this server "
                            f"is {self.max_batch_pixels:,} (KALDN_FINETUNE_MAX_BATCH_PIXELS): lower one of them.")
        if not images:
            raise UserError("Upload a few HR images to fine-tune on (or use the examples).")
        if len(images) > self.max_images:
            raise UserError(f"{len(images)} training images; the limit on this server is {self.max_images} "
                            "(KALDN_FINETUNE_MAX_IMAGES).")
        try:
            spec = parse_model_name(settings.base)
            base_label = spec.name
        except ValueError:
            entry = self.registry.for_owner(owner).get(settings.base)  # only the owner's own models, by key
            if entry is None or entry.third_party:
                raise UserError(f"Unknown base model {quoted(settings.base)}: choose one from the list.") from None
            spec = parse_model_name(entry.model)
            settings = replace(settings, base=str(entry.path))  # the job trains from its folder
            base_label = entry.label
        sizes = trainable_backbones(available_models())
        if spec.backbone not in sizes:
            raise UserError(f"{base_label} is a {spec.backbone or spec.arch} model: this server fine-tunes the sizes "
                            f"it ships ({', '.join(sorted(sizes))}), whose memory at the batch limit is known. Train it "
                            "on your own machine with `kaldn train --init`.")
        self.registry.require_room(owner, client)  # asked before training, not after
        turn = client or owner
        wait = self._turn_after.get(turn or "", 0.0) - time.monotonic()
        if wait > 0 and not self.busy:
            raise BusyError(f"Others were waiting while your last job ran: your next one can start in {wait:.0f} s "
                            "(one job at a time for the whole server, taken in turns).")
        if not self._lock.acquire(blocking=False):
            running = self.job  # None while the next job prepares its data
            if turn and (running is None or running.turn != turn):  # someone else, not the job's own
                self._waited = True
            if running is None:
                left = f" One is starting; it trains for at most about {self.time_budget_s:.0f} s."
            else:
                left = (f" It stops in about {max(0.0, running.started + running.time_budget_s - time.time()):.0f}"
                        " s (its time budget).")
            raise BusyError("Another fine-tuning job is running on this server (one at a time, to keep the "
                            f"demo responsive). Try again when it has finished.{left}")
        self._waited = False  # who waits for this job counts from now
        try:
            n = next(self._count)
            folder = Path(tempfile.mkdtemp(prefix=f"job{n}-", dir=self._root()))
            try:
                count, notes, patch = prepare_finetune_data(images, spec.scale, settings.patch, folder / "data",
                                                            max_pixels=max_pixels,
                                                            max_total_pixels=self.max_total_pixels,
                                                            val_folder=folder / "val")
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            if patch != settings.patch:
                notes.append(f"Training patch reduced to {patch} LR pixels to fit the smallest image.")
                settings.patch = patch
            side = VAL_LR_SIDE * spec.scale
            notes.insert(0, f"Training on {count} image(s); validation on their centres (at most {side}x{side} "
                            "pixels each: it measures how well the model fits them).")
            # The downloaded model says what it was trained on in words, not in the server's folders.
            recorded = {"data": f"{count} uploaded image(s), fine-tuned in the kaldn app",
                        "val": f"the centres of the same {count} image(s)", "init": base_label}
            job = FineTuneJob(settings, folder, owner, time_budget_s=self.time_budget_s, client=client,
                              recorded=recorded, model_source=self.model_source)
            self.job = job
            job.thread = threading.Thread(target=job._run, args=(lambda: self._ended(job),), daemon=True,
                                          name=f"kaldn-finetune-{n}")
            job.thread.start()
            return job, notes
        except BaseException:
            self.job = None
            self._lock.release()
            raise

    def _ended(self, job: FineTuneJob) -> None:
        """The job's thread is done: give others their turn if they waited, then free the server."""
        now = time.monotonic()
        self._turn_after = {o: t for o, t in self._turn_after.items() if t > now}
        if self._waited and job.turn:
            self._turn_after[job.turn] = now + self.turn_s
        self.job = None  # nothing runs now: no stop time to quote, nothing to cancel
        if job.abandoned:  # its follower gave up waiting and deleted the folder, which training then re-made
            shutil.rmtree(job.folder, ignore_errors=True)
        self._lock.release()

    def _root(self) -> Path:
        if self._base is None:
            self.root = instance_root(Path(tempfile.gettempdir()) / "kaldn-finetune")
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root

    def cancel(self, owner: str | None) -> bool:
        """Ask the running job to stop; only its owner may (no owner, no cancel). True if one was asked."""
        job = self.job
        if job is None or not self.busy or not owner or job.owner != owner:
            return False
        job.stop.set()
        return True

    def register(self, job: FineTuneJob) -> SessionModel | None:
        """Add a finished (or cancelled) job's model to the registry."""
        path = job.checkpoint_dir()
        if path is None:
            return None
        config = read_config(path / CONFIG_NAME)
        done = (config.get("training") or {}).get("iterations_done")
        validation = config.get("validation") or {}
        return self.registry.add(path, config["model"], {"iterations": done, "base": job.settings.base,
                                                         "val_psnr": validation.get("val_psnr")},
                                 delete_dir=job.folder, owner=job.owner, since=job.admitted, client=job.client)

    def run(self, images: Sequence[Any], settings: FineTuneSettings, owner: str | None = None,
            max_pixels: int | None = None, min_interval: float = 1.0,
            client: str | None = None) -> Iterator[FineTuneUpdate]:
        """Start a job and follow it: an update at least every ``min_interval`` seconds of progress and at every
        validation, then the final one with the new model (already in the registry).

        Closing the iterator early (the user went away) stops the job and waits for it. Raises what
        :meth:`start` raises, and :class:`FineTuneError` when training fails.
        """
        job, notes = self.start(images, settings, owner=owner, max_pixels=max_pixels, client=client)
        s = job.settings  # as trained: the patch may have been reduced, a session base is its folder
        own = self.registry.for_owner(owner).get(settings.base)
        base = own.label if own is not None else settings.base  # the user's name for it, never a server path
        header = (f"Fine-tuning **{base}** for {s.iters} iterations (lr {s.lr:g}, batch {s.batch}, "
                  f"patch {s.patch}). " + notes[0])
        history: list[dict] = []
        started, last_update = time.time(), 0.0
        followed = False  # False when the iterator is closed early (the user went away)
        try:
            yield FineTuneUpdate(header + "\n\nPreparing (measuring the base model first)...", [], 0, s.iters,
                                 notes=notes[1:])
            for event in job.events():
                if event["event"] in ("step", "validation"):
                    history.append(event)
                if time.time() - last_update < min_interval and event["event"] != "validation":
                    continue
                last_update = time.time()
                done = max([h["iteration"] for h in history], default=0)
                vals = [h for h in history if h["event"] == "validation"]
                line = f"Iteration {done}/{s.iters}, {time.time() - started:.0f} s"
                if vals:
                    line += f"; validation PSNR {vals[-1]['val_psnr']:.2f} dB (before: {vals[0]['val_psnr']:.2f} dB)"
                yield FineTuneUpdate(header + "\n\n" + line, list(history), done, s.iters)
            followed = True
        finally:
            if job.thread is not None and job.thread.is_alive():  # closed early: stop and wait
                job.stop.set()
                job.thread.join(timeout=60)
            if not followed:  # nobody will see or use this model: leave nothing behind
                job.abandoned = True  # a thread still stopping may write again: it deletes the folder at its end
                shutil.rmtree(job.folder, ignore_errors=True)
        entry = None
        try:
            if job.error:
                raise FineTuneError(f"Fine-tuning failed: {job.error}")
            entry = self.register(job)  # BusyError when the server filled up while it trained
        finally:
            if entry is None:  # failed, nothing trained, or not registered: the registry will never delete it
                shutil.rmtree(job.folder, ignore_errors=True)
        vals = [h for h in history if h["event"] == "validation"]
        status = job.result.status if job.result is not None else ""
        cancelled = status == "cancelled"
        done = job.result.iteration if job.result else 0
        word = "Cancelled" if cancelled else ("Stopped at the time budget" if status == "time budget" else "Finished")
        summary = f"{header}\n\n**{word}** after {done} iterations in {time.time() - started:.0f} s."
        if status == "time budget":
            summary += (f" Fine-tuning jobs on this server run for at most {job.time_budget_s:.0f} s "
                        "(KALDN_FINETUNE_TIME_BUDGET_S); the model trained so far is kept.")
        if len(vals) > 1:
            summary += f" Validation PSNR {vals[0]['val_psnr']:.2f} → best {max(v['val_psnr'] for v in vals):.2f} dB."
        downloads = None
        if entry is not None:
            kind = variant_of(entry.model)
            lists = "Compare and How-it-works model lists" if kind is not None and kind.depthwise \
                else "Compare model list (How it works lists depthwise models only)"
            summary += (f" The model is now **{entry.label}** in the {lists} "
                        f"(choose scale x{parse_model_name(entry.model).scale} there).")
            downloads = [str(entry.path / WEIGHTS_NAME), str(entry.path / CONFIG_NAME)]
        yield FineTuneUpdate(summary, history, done, s.iters, downloads=downloads, entry=entry)

    def cancel_message(self, owner: str | None) -> tuple[str, str]:
        """Ask the owner's running job to stop; (kind, message) for the user, kind "info" or "warning"."""
        if self.cancel(owner=owner):
            return "info", "Stopping after the current iteration; the model trained so far is kept."
        if self.busy:
            return "warning", "The running job belongs to another session; only its owner can cancel it."
        return "info", "No fine-tuning job is running."


# --- model lists --------------------------------------------------------------------------------------------

PREFERRED_BASES = ("kdsconv-det", "ldsconv")  # the default base: the first of these shipped at x4


def trainable_backbones(available: Sequence[str]) -> set[str]:
    """The backbones of the ``available`` (bundled) models: the sizes fine-tuned here. A step's memory grows with
    its base's size: at the batch-pixel cap, autograd keeps 9-18 GiB for the paper's backbone against 0.4-1.8 for
    tiny and small (``python -m benchmarks.finetune_memory``)."""
    return {spec.backbone for spec in map(parse_model_name, available) if spec.backbone is not None}


def base_choices(available: Sequence[str], registry: SessionModels | None = None) -> list[tuple[str, str]]:
    """(label, value) choices for the base model: every available model of a variant, then the session's own of
    a size fine-tuned here (by key; uploads of a peer's released weights are for comparing only, not for training
    further)."""
    choices = [(f"{v.label} x{parse_model_name(name).scale} ({name})", name)
               for name in available if (v := variant_of(name)) is not None]
    sizes = trainable_backbones(available)
    return choices + [(e.label, e.key) for e in (registry.items() if registry is not None else [])
                      if not e.third_party and parse_model_name(e.model).backbone in sizes]


def default_base(choices: Sequence[tuple[str, str]]) -> str | None:
    values = [value for _, value in choices]
    for key in PREFERRED_BASES:
        preferred = variant(key).model_name(4)
        if preferred in values:
            return preferred
    return values[0] if values else None
