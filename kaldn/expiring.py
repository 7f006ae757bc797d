"""A bounded memory of keys, each forgotten a while after it was noted: for "this was found missing" and
"this session ended", which must cost a client nothing however many keys it makes up."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Hashable

__all__ = ["ExpiringKeys"]


class ExpiringKeys:
    """Keys with the time (``time.monotonic()``) each was last noted, kept ``keep_s`` seconds; at most ``cap``,
    the oldest forgotten first. Thread-safe."""

    def __init__(self, keep_s: float, cap: int) -> None:
        self.keep_s, self.cap = keep_s, cap
        self._noted: OrderedDict[Hashable, float] = OrderedDict()  # oldest first
        self._lock = threading.Lock()

    def note(self, key: Hashable) -> None:
        with self._lock:
            self._noted.pop(key, None)
            self._noted[key] = time.monotonic()
            self._prune()

    def noted_at(self, key: Hashable) -> float | None:
        """When ``key`` was last noted, or None when it is not (or no longer) remembered."""
        with self._lock:
            self._prune()
            return self._noted.get(key)

    def _prune(self) -> None:
        now = time.monotonic()
        while self._noted:
            oldest, at = next(iter(self._noted.items()))
            if now - at <= self.keep_s and len(self._noted) <= self.cap:
                break
            del self._noted[oldest]
