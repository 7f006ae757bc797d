"""The app's limits, read from the environment once, when the app starts.

=================================  ==========================================  ===============
variable                           what                                        default
=================================  ==========================================  ===============
``KALDN_APP_MAX_PIXELS``           largest upload, pixels                      2048 x 2048
``KALDN_APP_MAX_OUTPUT_PIXELS``    largest output, pixels                      2048 x 2048
``KALDN_APP_MAX_FILE_SIZE``        upload size cap (Gradio's syntax)           ``25mb``
``KALDN_APP_CONCURRENCY``          comparisons at a time                       1
``KALDN_APP_QUEUE_SIZE``           queued requests                             32
``KALDN_APP_GPU_SECONDS``          ZeroGPU duration of one comparison          120
``KALDN_APP_MODEL_SOURCE``         ``bundled``, ``auto`` or ``hub``            ``bundled``
``KALDN_FINETUNE_MAX_ITERS``       iterations of one fine-tuning job           2000
``KALDN_APP_SESSION_JOBS``         jobs one session may have queued/running    1
``KALDN_APP_CLIENT_JOBS``          the same over one address's sessions        8 (0: off)
``KALDN_APP_MAX_BODY``             largest request body besides uploads        16 KiB
``KALDN_APP_SESSION_TTL``          seconds a session's results are kept        1800
``KALDN_APP_RUN_MEMORY``           bytes of results kept in memory (all)       256 MiB
``KALDN_FINETUNE_TIME_BUDGET_S``   wall-clock seconds of one fine-tuning job   600
``KALDN_FINETUNE_MAX_IMAGES``      training images of one job                  8
``KALDN_FINETUNE_MAX_TOTAL_PIXELS``  their pixels in all                       2048 x 2048
``KALDN_FINETUNE_MAX_BATCH_PIXELS``  batch x patch^2 (LR pixels per step)      16 x 48^2
``KALDN_APP_MAX_CHECKPOINT_BYTES``  largest uploaded checkpoint              24 MiB
``KALDN_APP_CONVERT_MEMORY``       address space a conversion may add to      1 GiB
                                   what its imports mapped
``KALDN_APP_CONVERT_SECONDS``      wall-clock seconds of one conversion       120
``KALDN_APP_MAX_UPLOAD_BODY``      one upload request (several files)         file size x images
``KALDN_APP_MIN_FREE_DISK``        uploads, jobs, views refused below this     1 GiB (0: off)
                                   much free disk
``KALDN_APP_CLIENT_UPLOAD``        upload bytes of one address within the      2 GiB (0: off)
                                   time uploads are kept (an hour)
``KALDN_APP_VIEWS``                views (slider pair, zoom, kernels) at once  4
``KALDN_APP_MAX_COMPARE_GMACS``    G multiply-adds of one comparison           1000
``KALDN_APP_SESSIONS``             sessions whose input values Gradio keeps    2000
``KALDN_FINETUNE_TURN_S``          after a job others waited for, its owner    60 (0: off)
                                   waits this long before the next one
=================================  ==========================================  ===============

``kaldn.hub``'s own settings (``KALDN_CHECKPOINTS``, ``KALDN_HUB_REPO``, ...) are read by the loader.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger("kaldn.settings")


def env_int(name: str, default: int, minimum: int = 1) -> int:
    """An integer of at least ``minimum`` from the environment, ``default`` when unset or invalid."""
    try:
        value = int(os.environ.get(name, "").strip() or default)
    except ValueError:
        log.warning("%s=%r is not an integer; using %d", name, os.environ.get(name), default)
        return default
    return value if value >= minimum else default


# What the commands and the app may be told to load names from (kaldn.hub's sources but "local", which needs a
# folder they lack). Bundled by default: those files are what README's numbers describe, and nobody vouches for
# the default Hub repository's contents.
MODEL_SOURCES = ("bundled", "auto", "hub")
DEFAULT_MODEL_SOURCE = "bundled"


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` from the environment, ``default`` when unset or not one of them."""
    value = os.environ.get(name, "").strip() or default
    if value not in choices:
        log.warning("%s=%r is not one of %s; using %r", name, value, ", ".join(choices), default)
        return default
    return value


_SIZE_UNITS = {"b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40}


def file_size_bytes(size: str | int) -> int:
    """Bytes of a size in Gradio's ``max_file_size`` syntax: an int, or a number and a unit, "25mb" (1024-based)."""
    if isinstance(size, int):
        return size
    text = str(size).replace(" ", "").lower()
    digits = len(text) - len(text.lstrip("0123456789"))
    if digits == 0 or text[digits:] not in _SIZE_UNITS:
        raise ValueError(f"not a file size: {size!r} (e.g. 25mb)")
    return int(text[:digits]) * _SIZE_UNITS[text[digits:]]


@dataclass(frozen=True)
class AppSettings:
    max_pixels: int = 2048 * 2048
    max_output_pixels: int = 2048 * 2048
    max_file_size: str = "25mb"
    concurrency: int = 1
    queue_size: int = 32
    gpu_seconds: int = 120
    # The weights the results describe; ``auto``/``hub`` read ``KALDN_HUB_REPO`` first (see kaldn.hub).
    model_source: str = DEFAULT_MODEL_SOURCE
    finetune_max_iters: int = 2000
    session_jobs: int = 1
    # Jobs over one address's sessions (admission.client_key), 0: no per-address bounds. A quarter of the queue:
    # no address holds more, and a class behind one NAT still has eight at once.
    client_jobs: int = 8
    max_body: int = 16 << 10              # an API call's JSON (file payloads are paths): the largest is ~5 KiB
    session_ttl: int = 1800
    run_memory: int = 256 << 20  # with one comparison at the caps (~1.3 GiB) stays under 2 GiB
    finetune_time_budget_s: int = 600
    finetune_max_images: int = 8
    finetune_max_total_pixels: int = 2048 * 2048
    finetune_max_batch_pixels: int = 16 * 48 * 48
    max_checkpoint_bytes: int = 24 << 20  # under Gradio's upload cap (25mb); the peers' files are 2.5-3.3 MB
    convert_memory: int = 1 << 30         # beyond the imports; a peer's file converts within 64 MiB of it
    convert_seconds: int = 120
    max_upload_body: int | None = None    # None: the fine-tune tab's images at the file size cap, plus framing
    min_free_disk: int = 1 << 30
    # Upload bytes one address (admission.client_key) may send within the time uploads are kept, 0: off. Ten
    # full fine-tune uploads; a class behind one NAT still has 13 photos of 5 MB each for 30 people.
    client_upload: int = 2 << 30
    finetune_turn_s: int = 60
    views: int = 4                        # a pair view of a 2048^2 run peaks at ~200 MiB (benchmarks.view_memory)
    # One comparison's work, whatever is chosen or uploaded: the default variants on a 2048^2 upload need
    # 294 G at x4 (58 s on one thread, benchmarks.load) and 817 G at x2 (README, "Hosting safely").
    max_compare_gmacs: int = 1000
    sessions: int = 2000                  # Gradio keeps every session's input values: bounded memory

    @property
    def upload_cap(self) -> int:
        """The largest upload request: ``max_upload_body``, or what the fine-tune tab may send at once."""
        if self.max_upload_body is not None:
            return self.max_upload_body
        return self.finetune_max_images * file_size_bytes(self.max_file_size) + (1 << 20)

    @classmethod
    def from_env(cls) -> "AppSettings":
        d = cls()
        return cls(max_pixels=env_int("KALDN_APP_MAX_PIXELS", d.max_pixels),
                   max_output_pixels=env_int("KALDN_APP_MAX_OUTPUT_PIXELS", d.max_output_pixels),
                   max_file_size=os.environ.get("KALDN_APP_MAX_FILE_SIZE", d.max_file_size),
                   concurrency=env_int("KALDN_APP_CONCURRENCY", d.concurrency),
                   queue_size=env_int("KALDN_APP_QUEUE_SIZE", d.queue_size),
                   gpu_seconds=env_int("KALDN_APP_GPU_SECONDS", d.gpu_seconds),
                   model_source=env_choice("KALDN_APP_MODEL_SOURCE", d.model_source, MODEL_SOURCES),
                   finetune_max_iters=env_int("KALDN_FINETUNE_MAX_ITERS", d.finetune_max_iters),
                   session_jobs=env_int("KALDN_APP_SESSION_JOBS", d.session_jobs),
                   client_jobs=env_int("KALDN_APP_CLIENT_JOBS", d.client_jobs, minimum=0),
                   max_body=env_int("KALDN_APP_MAX_BODY", d.max_body),
                   session_ttl=env_int("KALDN_APP_SESSION_TTL", d.session_ttl),
                   run_memory=env_int("KALDN_APP_RUN_MEMORY", d.run_memory),
                   finetune_time_budget_s=env_int("KALDN_FINETUNE_TIME_BUDGET_S", d.finetune_time_budget_s),
                   finetune_max_images=env_int("KALDN_FINETUNE_MAX_IMAGES", d.finetune_max_images),
                   finetune_max_total_pixels=env_int("KALDN_FINETUNE_MAX_TOTAL_PIXELS", d.finetune_max_total_pixels),
                   finetune_max_batch_pixels=env_int("KALDN_FINETUNE_MAX_BATCH_PIXELS", d.finetune_max_batch_pixels),
                   max_checkpoint_bytes=env_int("KALDN_APP_MAX_CHECKPOINT_BYTES", d.max_checkpoint_bytes),
                   convert_memory=env_int("KALDN_APP_CONVERT_MEMORY", d.convert_memory),
                   convert_seconds=env_int("KALDN_APP_CONVERT_SECONDS", d.convert_seconds),
                   max_upload_body=env_int("KALDN_APP_MAX_UPLOAD_BODY", 0) or None,
                   min_free_disk=env_int("KALDN_APP_MIN_FREE_DISK", d.min_free_disk, minimum=0),  # 0: off
                   client_upload=env_int("KALDN_APP_CLIENT_UPLOAD", d.client_upload, minimum=0),  # 0: off
                   views=env_int("KALDN_APP_VIEWS", d.views),
                   max_compare_gmacs=env_int("KALDN_APP_MAX_COMPARE_GMACS", d.max_compare_gmacs),
                   sessions=env_int("KALDN_APP_SESSIONS", d.sessions),
                   finetune_turn_s=env_int("KALDN_FINETUNE_TURN_S", d.finetune_turn_s, minimum=0))  # 0: off
