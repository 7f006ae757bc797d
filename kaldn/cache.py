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
        self._loading: dict[str, threading.Lock] = {}

    def raw(self, ref: str) -> nn.Module:
        """The model ``ref`` names (a model name or checkpoint path), as loaded: for inspection."""
        with self._lock:
            if ref not in self._loading and len(self._loading) >= 4 * self.max_models:
                for idle in [k for k, lock in self._loading.items() if not lock.locked()]:
                    del self._loading[idle]  # bounded: session folders come and go
            loading = self._loading.setdefault(ref, threading.Lock())
        # A load (disk, or a round trip to the Hub) holds this model's lock only: a request for a model in
        # memory is not kept waiting behind another's load; requests for the same model wait for one load.
        with loading:
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
                self._raw[ref] = model
                while len(self._raw) > self.max_models:
                    self._raw.popitem(last=False)
            return model

    def prepared(self, ref: str, device: torch.device | str) -> nn.Module:
        """The fused, channels_last copy on ``device``: for upscaling."""
        key = (ref, str(device))
        with self._lock:
            if key in self._prepared:
                self._prepared.move_to_end(key)
                return self._prepared[key]
        model = prepare_model(self.raw(ref), device=device)  # outside the lock, as loads are
        with self._lock:
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
