"""Loaded models, kept for reuse: each raw (CPU, eval, frozen) and its prepared copy per device; bounded LRU.

The app's comparison, model inspection and hasty-ReLU views all load through one :class:`ModelCache`, so a
model is read from disk (or the Hub) once per process.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

import torch
from torch import nn

from .checkpoint import CheckpointError
from .expiring import ExpiringKeys
from .hub import load_model
from .inference import prepare_model

# What a failed load raises: no checkpoint anywhere (ModelNotFoundError is a FileNotFoundError), or a bad one.
MODEL_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, CheckpointError)


class _Load:
    """One model's load in flight: its lock, and how many requests hold or wait for it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


class ModelCache:
    """Loaded models (CPU, eval) and their fused, prepared copies per device; bounded LRU, thread-safe."""

    def __init__(self, max_models: int = 24, source: str = "auto", missing_ttl_s: float = 600.0) -> None:
        self.max_models = max_models
        self.source = source
        # A model found nowhere (bundled or on the Hub) is not looked up again for this long: each lookup may
        # wait on the Hub, so a client naming missing models over and over would keep loads busy.
        self._missing = ExpiringKeys(keep_s=missing_ttl_s, cap=1000)  # refs: model names and session folders
        self._raw: OrderedDict[str, nn.Module] = OrderedDict()
        self._prepared: OrderedDict[tuple[str, str], nn.Module] = OrderedDict()
        self._lock = threading.RLock()  # the dicts only; a load holds its model's lock in _loading
        self._loading: dict[str, _Load] = {}  # loads in flight (and their waiters), by ref

    def raw(self, ref: str) -> nn.Module:
        """The model ``ref`` names (a model name or checkpoint path), as loaded: for inspection."""
        with self._lock:
            load = self._loading.get(ref)
            if load is None:
                load = self._loading[ref] = _Load()
            load.users += 1
        # A load (disk, or a round trip to the Hub) holds this model's lock only: a request for a model in
        # memory is not kept waiting behind another's load; requests for the same model wait for one load.
        try:
            with load.lock:
                with self._lock:
                    if ref in self._raw:
                        self._raw.move_to_end(ref)
                        return self._raw[ref]
                    found_missing = self._missing.noted_at(ref)
                    if found_missing is not None:
                        raise FileNotFoundError(f"no checkpoint for {ref} (not found "
                                                f"{time.monotonic() - found_missing:.0f} s ago)")
                try:
                    model = load_model(ref, source=self.source).eval()
                except FileNotFoundError:
                    with self._lock:
                        self._missing.note(ref)
                    raise
                for p in model.parameters():
                    p.requires_grad_(False)
                with self._lock:
                    if self._loading.get(ref) is load:  # else forgotten while it loaded: not kept
                        self._raw[ref] = model
                        while len(self._raw) > self.max_models:
                            self._raw.popitem(last=False)
                return model
        finally:
            with self._lock:
                load.users -= 1
                if not load.users and self._loading.get(ref) is load:
                    del self._loading[ref]  # only loads in flight are listed

    def prepared(self, ref: str, device: torch.device | str) -> nn.Module:
        """The fused, channels_last copy on ``device``: for upscaling."""
        key = (ref, str(device))
        with self._lock:
            if key in self._prepared:
                self._prepared.move_to_end(key)
                return self._prepared[key]
        model = prepare_model(self.raw(ref), device=device)  # outside the lock, as loads are
        with self._lock:
            if ref not in self._raw:  # forgotten meanwhile: not kept
                return model
            model = self._prepared.setdefault(key, model)  # a concurrent first use may have put one there
            self._prepared.move_to_end(key)
            while len(self._prepared) > self.max_models:
                self._prepared.popitem(last=False)
            return model

    def forget(self, ref: str) -> None:
        with self._lock:
            self._raw.pop(ref, None)
            self._loading.pop(ref, None)
            for key in [k for k in self._prepared if k[0] == ref]:
                del self._prepared[key]
