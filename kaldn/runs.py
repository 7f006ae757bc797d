"""One comparison as the app keeps it, and the runs of this process.

:class:`ComparisonRun` is a finished comparison with its outputs written as lossless PNGs and a
``metrics.csv``, and the views drawn from it: the slider's pair, the zoomed crops, the error and pair
maps. :class:`RunStore` keeps one live run per session, in memory within a byte budget (older runs are
read back from their PNGs), on disk until the session moves on, ends or expires.
"""

from __future__ import annotations

import logging
import math
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .admission import EndedSessions
from .choices import BICUBIC, BICUBIC_LABEL, variant_label
from .comparison import GROUND_TRUTH, LR_INPUT, Comparison, pair_image, pair_images, save_outputs, zoom_crops
from .display import draw_region, label_above, picker_factor, tile_grid
from .errors import UserError
from .images import load_image, save_png
from .maps import (NO_GROUND_TRUTH, PairDifference, default_zoom_center, error_colour_bar, error_maps,
                   pair_difference, render_pair_difference)

log = logging.getLogger("kaldn.runs")

__all__ = ["DEFAULT_REGION_SIZE", "REGION_SIZES", "ComparisonRun", "MapsView", "RunStore", "ZoomView",
           "region_size"]


REGION_SIZES = (16, 256)  # the zoom region's side, output pixels: smallest, largest
DEFAULT_REGION_SIZE = 64


def _finite(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer too large for a float
        number = math.nan
    if not math.isfinite(number):
        raise UserError(f"{what} must be a number, got {str(value)[:40]!r}.")
    return number


def region_size(value: Any) -> int:
    """The zoom region's side from a client (None: the default), checked: a whole number within REGION_SIZES."""
    if value is None:
        return DEFAULT_REGION_SIZE
    size = _finite(value, "The region size")
    low, high = REGION_SIZES
    if not low <= size <= high:
        raise UserError(f"The region size must be from {low} to {high} output pixels, got {size:g}.")
    return int(round(size))


# --- one run as the app keeps it: files, slider, crops ----------------------------------------------------

@dataclass
class ZoomView:
    picker: np.ndarray                       # the reference image with the region outlined, reduced (display)
    crops: list[tuple[np.ndarray, str]]      # (crop, caption): LR input, every output, ground truth
    center: tuple[int, int]                  # of the region, in output pixels

    def labelled(self) -> list[np.ndarray]:
        """The crops with their captions drawn above them (a gallery's captions would cover the crop)."""
        return [label_above(crop, caption, square=True) for crop, caption in self.crops]


@dataclass
class MapsView:
    """Where the outputs are wrong (error maps) and where the slider's two images differ (pair map)."""

    errors: np.ndarray | None                # every output's error map on one scale, one colour bar
    errors_note: str                         # Markdown: the shared scale, or why there are no maps
    pair: np.ndarray | None                  # the rendered pair map (title, map, colour bar)
    pair_note: str                           # Markdown: win shares and PSNR difference, or |A - B|


@dataclass
class ComparisonRun:
    """A comparison with its outputs written to ``folder`` (lossless PNGs and ``metrics.csv``)."""

    comparison: Comparison
    folder: Path
    paths: dict[str, Path]
    region: tuple[int, int, int, int] | None = None
    pair: tuple[str, str] | None = None      # the slider's two keys, set by :meth:`slider`

    @property
    def scale(self) -> int:
        return self.comparison.inputs.scale

    def downloads(self) -> list[str]:
        """The files to offer: every output, the LR input, the ground truth and ``metrics.csv``."""
        return [str(path) for key, path in self.paths.items() if key != "lr-nearest"]

    def slider(self, left: str, right: str) -> tuple[str, str]:
        """Paths of the two images for the slider (``lr``: the LR input enlarged to the output size, written
        on first use)."""
        if not all(isinstance(k, str) for k in (left, right)):
            raise UserError("Choose two images of this comparison to compare.")
        missing = [k for k in (left, right) if k != "lr" and k not in self.paths]
        if missing:
            raise UserError(f"Not part of this comparison: {', '.join(missing)}.")
        self.pair = (left, right)
        return self._path(left), self._path(right)

    def _path(self, key: str) -> str:
        if key != "lr":
            return str(self.paths[key])
        path = self.folder / f"lr-nearest-x{self.scale}.png"
        if not path.exists():
            save_png(pair_image(self.comparison, "lr"), path)
        self.paths["lr-nearest"] = path
        return str(path)

    def label(self, key: str) -> str:
        if key == "gt":
            return GROUND_TRUTH
        if key == "lr":
            return f"{LR_INPUT} (nearest x{self.scale})"
        r = self.comparison.result(key)
        return r.label if r is not None else variant_label(key)

    def pair_difference(self, left: str, right: str) -> PairDifference:
        """:func:`kaldn.maps.pair_difference` of two slider keys (A = ``left``), against the ground truth
        when there is one; border = scale, as the metrics."""
        a, b = pair_images(self.comparison, left, right)
        labels = (self.label(left), self.label(right))
        if labels[0] == labels[1]:
            labels = (f"{labels[0]} (left)", f"{labels[1]} (right)")
        return pair_difference(a, b, self.comparison.inputs.gt, border=self.scale, labels=labels)

    def default_center(self, size: int) -> tuple[float, float] | None:
        """Where to zoom first: where the slider's pair differs most (two different outputs), else where the
        best model gains most over bicubic; None (the centre) when neither can be told."""
        if self.pair is not None and self.pair[0] != self.pair[1] and "lr" not in self.pair:
            return default_zoom_center(size, pair=self.pair_difference(*self.pair))
        models = [r for r in self.comparison.ok if r.key != BICUBIC]
        if not models or self.comparison.result(BICUBIC) not in self.comparison.ok:
            return None
        scored = [r for r in models if r.psnr is not None]
        best = max(scored, key=lambda r: r.psnr) if scored else models[0]
        gain = pair_difference(best.image, self.comparison.result(BICUBIC).image, self.comparison.inputs.gt,
                               border=self.scale, labels=(best.label, BICUBIC_LABEL))
        return default_zoom_center(size, best_vs_bicubic=gain)

    def error_view(self, columns: int = 4) -> tuple[np.ndarray | None, str]:
        """Every output's |SR - ground truth| on Y, side by side on one shared colour scale with one labelled
        colour bar (one image), and a Markdown note; without a ground truth no image and a note that says why."""
        if self.comparison.inputs.gt is None:
            return None, NO_GROUND_TRUTH
        ok = self.comparison.ok
        maps = error_maps({r.label: r.image for r in ok}, self.comparison.inputs.gt, border=self.scale)
        tiles = [label_above(maps.tile(r.label), f"{r.label}: mean {maps.mean_abs[r.label]:.2f}") for r in ok]
        note = (f"|output − ground truth| on the Y channel, in grey levels, every map on **one scale**: "
                f"black = 0, light yellow = {maps.limit:g} or more (the 99th percentile of all maps); the title "
                f"gives each output's mean error. The {self.scale}-pixel border the metrics skip is drawn but not "
                "counted. Same places bright in every map: hard for all; a place darker in one map: that variant "
                "does better there.")
        return tile_grid(tiles, columns, error_colour_bar(maps.limit, length=256)), note

    def pair_view(self, left: str, right: str) -> tuple[np.ndarray | None, str]:
        """The slider pair's difference map (rendered with its labelled colour bar) and a one-line summary."""
        if left == right:
            return None, "The slider shows the same image on both sides: choose two different ones."
        pair = self.pair_difference(left, right)
        return render_pair_difference(pair), pair.summary()

    def maps(self, left: str, right: str) -> MapsView:
        errors, errors_note = self.error_view()
        pair, pair_note = self.pair_view(left, right)
        return MapsView(errors, errors_note, pair, pair_note)

    def zoom(self, center: tuple[Any, Any] | None, size: Any) -> ZoomView:
        """Crops of the same region (about ``size`` output pixels, centred on ``center``; None: where the slider's
        pair differs most, see :meth:`default_center`)."""
        size = region_size(size)
        if center is not None:
            center = (_finite(center[0], "The region's x"), _finite(center[1], "The region's y"))
        if center is None:
            center = self.default_center(size)
        crops, region = zoom_crops(self.comparison, center, size)
        self.region = region
        x0, y0, w, h = region
        return ZoomView(draw_region(self._picker_image(), region, self.picker_factor), crops,
                        (x0 + w // 2, y0 + h // 2))

    def _picker_image(self) -> np.ndarray:
        inputs = self.comparison.inputs
        return inputs.gt if inputs.gt is not None else self.comparison.ok[-1].image

    @property
    def picker_factor(self) -> int:
        """How many output pixels one picker pixel spans (a click's position times this is in output pixels)."""
        return picker_factor(self._picker_image().shape)

    def zoom_at_click(self, index: Any, size: Any) -> ZoomView:
        """:meth:`zoom` centred where the picker was clicked (``index``: [x, y] in picker pixels)."""
        if not isinstance(index, (list, tuple)) or len(index) != 2:
            raise UserError("Click a point on the picture to zoom there.")
        x, y = (_finite(v, "The clicked point") for v in index)
        factor = self.picker_factor
        return self.zoom((x * factor + factor // 2, y * factor + factor // 2), size)


# --- the runs of this process: one live run per session, in memory within a byte budget, on disk until dropped --

def _nbytes(comparison: Comparison) -> int:
    arrays = [comparison.inputs.lr, comparison.inputs.gt] + [r.image for r in comparison.results]
    return sum(a.nbytes for a in arrays if a is not None)


def _stripped(run: ComparisonRun) -> ComparisonRun:
    """The same run without its arrays (metrics, labels and file paths kept): what stays in memory."""
    c = run.comparison
    inputs = replace(c.inputs, lr=None, gt=None)
    results = [replace(r, image=None) for r in c.results]
    return ComparisonRun(replace(c, inputs=inputs, results=results), run.folder, dict(run.paths), run.region)


def _reloaded(run: ComparisonRun) -> ComparisonRun:
    """The arrays read back from the run's lossless PNGs (16-bit colour comes back at 8 bits: display only)."""
    c = run.comparison
    paths = run.paths
    inputs = replace(c.inputs, lr=load_image(paths["lr"], max_pixels=1 << 40),
                     gt=load_image(paths["gt"], max_pixels=1 << 40) if "gt" in paths else None)
    results = [replace(r, image=load_image(paths[r.key], max_pixels=1 << 40) if r.status == "ok" else None)
               for r in c.results]
    return ComparisonRun(replace(c, inputs=inputs, results=results), run.folder, dict(paths), run.region)


@dataclass
class _StoredRun:
    run: ComparisonRun
    owner: str | None
    created: float
    in_memory: bool
    nbytes: int


class RunStore:
    """Comparison runs of this process, each in its own folder under ``root`` (give it a folder of this
    process, see :func:`kaldn.workdirs.instance_root`, so another instance never prunes them).

    * One live run per owner (a session): saving a new run drops the owner's previous one.
    * A run stays until its owner drops it (:meth:`drop`, :meth:`drop_owner`; :meth:`end_owner` when the
      session ended) or it is older than ``max_age_s``; nothing else removes it, so a session's files never disappear under it.
    * The arrays of at most ``memory_bytes`` (newest used first) stay in memory; older runs keep only
      their numbers and are read back from their PNGs when used again.
    """

    def __init__(self, root: str | Path, memory_bytes: int = 512 << 20, max_age_s: float = 3600.0) -> None:
        self.root = Path(root)
        self.memory_bytes = memory_bytes
        self.max_age_s = max_age_s
        self._runs: OrderedDict[str, _StoredRun] = OrderedDict()  # least recently used first
        self._lock = threading.RLock()
        self._ended = EndedSessions(keep_s=max_age_s)

    def save(self, comparison: Comparison, owner: str | None, since: float | None = None
             ) -> tuple[str, ComparisonRun]:
        """Write a run's files and keep it; (run id, run). Drops ``owner``'s previous run and expired ones.
        Refused when ``owner``'s session ended after ``since`` (the ``time.monotonic()`` the run started)."""
        if not comparison.ok:
            raise UserError("None of the chosen variants could run: "
                            + " ".join(r.message for r in comparison.results if r.message))
        self.prune()
        if owner:
            self.drop_owner(owner)
        self.root.mkdir(parents=True, exist_ok=True)
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(8)}"
        folder = self.root / run_id
        folder.mkdir()
        try:
            run = ComparisonRun(comparison, folder, save_outputs(comparison, folder))
        except BaseException:  # a full disk, say: no folder is left behind that nothing lists or prunes
            shutil.rmtree(folder, ignore_errors=True)
            raise
        with self._lock:
            ended = self._ended.ended(owner, since)  # its page closed while this ran: nobody will look at it
            if not ended:
                self._runs[run_id] = _StoredRun(run, owner, time.time(), True, _nbytes(comparison))
                self._trim()
        if ended:
            shutil.rmtree(folder, ignore_errors=True)
            raise UserError("This page's session has ended: reload the page to start a new one.")
        return run_id, run

    def source(self, run_id: str | None, owner: str | None = None) -> str | None:
        """The file the run's image came from (None: no such run of ``owner``'s, or no file), without
        reading a stripped run's arrays back."""
        with self._lock:
            stored = self._runs.get(run_id) if run_id else None
            if stored is None or (stored.owner is not None and stored.owner != owner):
                return None
            return stored.run.comparison.inputs.source

    def get(self, run_id: str | None, owner: str | None = None) -> ComparisonRun | None:
        """The run (arrays in memory), or None when it is gone or belongs to another owner."""
        if not run_id:
            return None
        with self._lock:
            stored = self._runs.get(run_id)
            if stored is None or (stored.owner is not None and stored.owner != owner):
                return None
            self._runs.move_to_end(run_id)
            run = stored.run
            if stored.in_memory:
                return run
        try:
            full = _reloaded(run)  # outside the lock: decoding PNGs takes a while
        except (OSError, ValueError):
            log.warning("run %s could not be read back", run_id, exc_info=True)
            return None
        with self._lock:
            stored = self._runs.get(run_id)
            if stored is not None and not stored.in_memory:
                stored.run, stored.in_memory = full, True
                self._trim(keep=run_id)
        return full

    def drop(self, run_id: str | None) -> None:
        """Forget a run and delete its folder (its session ended or moved on)."""
        with self._lock:
            stored = self._runs.pop(run_id, None) if run_id else None
        if stored is not None:
            shutil.rmtree(stored.run.folder, ignore_errors=True)

    def end_owner(self, owner: str | None) -> None:
        """``owner``'s session ended: its run is deleted, and one that finishes later is not kept."""
        self._ended.end(owner)  # first: a save from now on sees it (under its own lock)
        self.drop_owner(owner)

    def drop_owner(self, owner: str | None) -> None:
        with self._lock:
            ids = [k for k, v in self._runs.items() if owner and v.owner == owner]
        for run_id in ids:
            self.drop(run_id)

    def prune(self) -> None:
        """Drop runs older than ``max_age_s`` (their session's state has expired by then)."""
        now = time.time()
        with self._lock:
            ids = [k for k, v in self._runs.items() if now - v.created > self.max_age_s]
        for run_id in ids:
            self.drop(run_id)

    def memory(self) -> int:
        """Bytes of arrays held in memory."""
        with self._lock:
            return sum(v.nbytes for v in self._runs.values() if v.in_memory)

    def __len__(self) -> int:
        with self._lock:
            return len(self._runs)

    def _trim(self, keep: str | None = None) -> None:
        """Strip the arrays of the least recently used runs beyond the memory budget (never ``keep``,
        nor the newest run)."""
        total = self.memory()
        newest = next(reversed(self._runs), None)
        for run_id, stored in self._runs.items():
            if total <= self.memory_bytes:
                break
            if stored.in_memory and run_id not in (keep, newest):
                stored.run, stored.in_memory = _stripped(stored.run), False
                total -= stored.nbytes
