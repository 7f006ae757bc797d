"""Fair admission: at most ``limit`` jobs per session waiting or running, checked before a job is queued.

Gradio's queue is first in, first out: a client that submits forty jobs makes everyone behind it wait for
forty jobs, or fills the queue. The app asks :meth:`SessionSlots.admit` before a job enters the queue
(Gradio's ``validator``, which runs outside the queue), the handler calls :meth:`SessionSlots.started`
when it runs and :meth:`SessionSlots.finished` when it ends. A slot whose job never ran (the client went
away while it waited) is recognised as stale with the ``pending`` callback, which says how many of the
session's events the queue still holds, so a session is never locked out for good. A session is whatever
a client says it is, so the same bounds also count per client address (:func:`client_key`).

:class:`BodyLimit` admits request bodies only up to a size, before anything reads them, and uploads only up to
a byte budget per client address (:class:`UploadLedger`);
:class:`CheckedBodies` refuses a body that names a file by URL, which Gradio would otherwise download, or
a file that is not an upload held (Gradio would add it to its file sets), or that holds more or longer
values than any of the app's events sends, which Gradio would keep in the session's state.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .expiring import ExpiringKeys

log = logging.getLogger(__name__)

__all__ = ["BodyLimit", "CheckedBodies", "EndedSessions", "SessionSlots", "SingleFlight", "UploadLedger",
           "client_key", "held_upload", "names_remote_file", "oversized_values", "short_of_disk",
           "stray_file_reference"]


def client_key(host: str | None) -> str | None:
    """The address per-client bounds count by, or None where it may not be one client's.

    ``host`` is the peer as uvicorn resolved it: behind a proxy named in uvicorn's ``FORWARDED_ALLOW_IPS``, the
    first untrusted entry of X-Forwarded-For from the right, which no client can forge. Only a global address is
    one client's: a loopback, private or internal one is this machine, a proxy or balancer uvicorn was not told
    to trust (every visitor would share it, and a few sessions would lock everyone out), or a LAN, so those
    keep only the per-session bounds. Nothing here reads a header a client wrote. An IPv6 client counts by its
    /56, a subscriber's usual allocation (a /64 would give one household 256 keys).
    """
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return None  # no address (a unix socket, a test client)
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    if not address.is_global:
        return None
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/56", strict=False))
    return str(address)


@dataclass
class _Slot:
    admitted: float = field(default_factory=time.monotonic)
    running: bool = False
    what: str = "a job"         # for the message when another is refused: "a fine-tuning job"
    client: str | None = None   # its client's address (client_key), for the per-client bound


class EndedSessions:
    """Sessions that ended (their page closed), remembered for ``keep_s``: work of theirs that finishes later (a
    cancelled fine-tune registering its model, a comparison saving its run) is dropped instead of kept for
    nobody. Bounded: at most ``cap`` are remembered, the oldest forgotten first."""

    def __init__(self, keep_s: float = 3600.0, cap: int = 100_000) -> None:
        self._ended = ExpiringKeys(keep_s, cap)

    def end(self, session: str | None) -> None:
        if session and len(session) <= 64:  # Gradio's hashes are short; a longer one is no session of ours
            self._ended.note(session)

    def ended(self, session: str | None, since: float | None = None) -> bool:
        """Did ``session`` end (at or after ``since``, a ``time.monotonic()``)? A page whose connection dropped
        (a laptop asleep) ends its session yet may go on under it: work it starts after that is its own."""
        at = self._ended.noted_at(session) if session else None
        return at is not None and (since is None or at >= since)


class SessionSlots:
    """Per-session count of admitted jobs (waiting or running), and per client address (``client_limit``, 0:
    none) across that client's sessions; thread-safe."""

    def __init__(self, limit: int = 1, pending: Callable[[str], int] | None = None, grace_s: float = 10.0,
                 client_limit: int = 0) -> None:
        self.limit = limit
        self.client_limit = client_limit
        self.pending = pending      # how many events of a session the queue holds (waiting or running)
        self.grace_s = grace_s      # time between admission and the job showing up in the queue
        self._slots: dict[str, list[_Slot]] = {}
        self._lock = threading.Lock()

    def _prune(self, session: str) -> list[_Slot]:
        slots = self._slots.get(session, [])
        waiting = [s for s in slots if not s.running]
        if waiting and self.pending is not None:
            old = [s for s in waiting if time.monotonic() - s.admitted > self.grace_s]
            queued = self.pending(session)
            # The queue holds fewer of this session's events than we count: the oldest waiting ones left it.
            excess = len(slots) - queued
            for slot in old[:max(0, excess)]:
                slots.remove(slot)
        if slots:
            self._slots[session] = slots
        else:
            self._slots.pop(session, None)
        return slots

    def _client_held(self, client: str) -> int:
        sessions = [s for s, slots in self._slots.items() if any(slot.client == client for slot in slots)]
        return sum(1 for s in sessions for slot in self._prune(s) if slot.client == client)

    def refusal(self, session: str | None, what: str = "a job", client: str | None = None) -> str | None:
        """Take a slot for ``session``'s job ``what`` (None), or say why not: "session" when it already has
        ``limit`` jobs waiting or running, "client" when its ``client`` address has ``client_limit`` over all
        its sessions, "no session" for a call outside a browser/client session."""
        if not session:
            return "no session"
        with self._lock:
            slots = self._prune(session)
            if len(slots) >= self.limit:
                return "session"
            if client and self.client_limit and self._client_held(client) >= self.client_limit:
                return "client"
            self._slots.setdefault(session, []).append(_Slot(what=what, client=client))
            return None

    def admit(self, session: str | None, what: str = "a job", client: str | None = None) -> bool:
        """:meth:`refusal` as a yes or no."""
        return self.refusal(session, what, client) is None

    def holding(self, session: str | None) -> list[str]:
        """What ``session``'s jobs waiting or running are, oldest first."""
        with self._lock:
            return [slot.what for slot in self._prune(session)] if session else []

    def started(self, session: str | None) -> None:
        """The session's oldest waiting job is running now (it no longer needs the queue to vouch for it)."""
        with self._lock:
            for slot in self._slots.get(session or "", []):
                if not slot.running:
                    slot.running = True
                    return
            if session:  # admitted before a restart of the counter, or never: count it while it runs
                self._slots.setdefault(session, []).append(_Slot(running=True))

    def finished(self, session: str | None) -> None:
        """Give back the slot of a job that ended (however it ended)."""
        with self._lock:
            slots = self._slots.get(session or "", [])
            for slot in slots:
                if slot.running:
                    slots.remove(slot)
                    break
            if not slots:
                self._slots.pop(session or "", None)

    def held(self, session: str) -> int:
        with self._lock:
            return len(self._prune(session))


class SingleFlight:
    """At most ``per_session`` calls per session at a time, ``per_client`` per client address (default: half
    of ``limit``, so no client holds them all) and ``limit`` in all; ``enter`` never waits (False: refused).

    For quick calls that run outside the queue: without the queue's order, this is what bounds them.
    """

    def __init__(self, limit: int = 8, per_session: int = 1, per_client: int | None = None) -> None:
        self.limit, self.per_session = limit, per_session
        self.per_client = max(1, limit // 2) if per_client is None else per_client
        self._active: dict[str, int] = {}
        self._clients: dict[str, int] = {}
        self._lock = threading.Lock()

    def enter(self, session: str | None, client: str | None = None) -> bool:
        if not session:
            return False
        with self._lock:
            if (self._active.get(session, 0) >= self.per_session or sum(self._active.values()) >= self.limit
                    or (client and self._clients.get(client, 0) >= self.per_client)):
                return False
            self._active[session] = self._active.get(session, 0) + 1
            if client:
                self._clients[client] = self._clients.get(client, 0) + 1
            return True

    def leave(self, session: str | None, client: str | None = None) -> None:
        with self._lock:
            for counts, key in ((self._active, session or ""), (self._clients, client or "")):
                left = counts.get(key, 0) - 1
                if left > 0:
                    counts[key] = left
                else:
                    counts.pop(key, None)


def _upload_route(scope) -> bool:
    # Only Gradio's own upload route (exactly: "/gradio_api/call/upload" is not an upload).
    upload = scope.get("root_path", "").rstrip("/") + "/gradio_api/upload"
    return scope.get("path", "").rstrip("/") in (upload, "/gradio_api/upload")


class UploadLedger:
    """Bytes each client address uploaded within the last ``window_s`` seconds, counted as they arrive (so uploads
    running at once count against each other) in buckets of ``bucket_s``, for at most ``cap`` addresses (the
    longest quiet forgotten first). Used from the event loop only, so unlocked."""

    def __init__(self, window_s: float, cap: int = 100_000, bucket_s: float = 60.0) -> None:
        self.window_s, self.cap, self.bucket_s = window_s, cap, bucket_s
        self._sent: OrderedDict[str, tuple[list[int], deque[list[float]]]] = OrderedDict()  # (total, [[t, n]])

    def used(self, client: str) -> int:
        if client not in self._sent:
            return 0
        total, buckets = self._sent[client]
        while buckets and time.monotonic() - buckets[0][0] > self.window_s:
            total[0] -= int(buckets.popleft()[1])
        if not buckets:
            del self._sent[client]
        return total[0]

    def add(self, client: str, nbytes: int) -> None:
        if nbytes <= 0:
            return
        now = time.monotonic()
        total, buckets = self._sent.setdefault(client, ([0], deque()))
        if buckets and now - buckets[-1][0] < self.bucket_s:
            buckets[-1][1] += nbytes
        else:
            buckets.append([now, nbytes])
        total[0] += nbytes
        self._sent.move_to_end(client)
        while len(self._sent) > self.cap:
            self._sent.popitem(last=False)


class BodyLimit:
    """ASGI middleware: request bodies over ``max_body`` bytes are refused (413); uploads (Gradio's upload
    route, several files per request) over ``max_upload``, and uploads while the disk holding ``disk`` has
    under ``min_free`` bytes free (507). Without it, a file sent inline (a ``data:`` URL) or junk JSON would
    be read into memory whole, and uploads could fill the disk, whatever their size. Given ``client_upload``,
    one client address (:func:`client_key`) may upload at most that many bytes within ``upload_window_s``, the
    time an upload is kept at most (429): else one client could fill the disk down to the floor, which
    refuses everyone's uploads, and keep it there.

    An upload that declares its length (browsers and gradio_client do) is judged on it before a byte is
    read, so a refused one leaves nothing behind; every body is also counted as it arrives (a chunked
    body declares nothing, and with ``Transfer-Encoding`` the server ignores ``Content-Length``), and an
    upload is stopped once over the cap or once the disk runs short while it arrives.
    """

    DISK_CHECK_BYTES = 8 << 20  # an arriving upload re-checks the free disk every this many bytes

    def __init__(self, app: Callable, max_body: int, max_upload: int | None = None, min_free: int = 0,
                 disk: str | None = None, client_upload: int = 0, upload_window_s: float = 3600.0) -> None:
        self.app, self.max_body, self.max_upload = app, max_body, max_upload
        self.min_free, self.disk = min_free, disk
        self.client_upload, self.ledger = client_upload, UploadLedger(upload_window_s)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        declared = int(length) if length is not None and length.isdigit() and \
            b"transfer-encoding" not in headers else None
        upload = _upload_route(scope)
        limit = (self.max_upload if upload else self.max_body) or 0  # 0: no cap (an upload, max_upload None)
        if limit and declared is not None and declared > limit:
            return await self._refuse(send, 413, upload)
        if upload and self._short_of_disk(declared or 0):
            return await self._refuse(send, 507, upload)
        client = client_key((scope.get("client") or (None,))[0]) if upload and self.client_upload else None
        if client and self.ledger.used(client) + (declared or 0) > self.client_upload:
            return await self._refuse(send, 429, upload)
        received, checked, started = 0, 0, False

        async def counted_receive():
            nonlocal received, checked
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if limit and received > limit:
                    raise _Refused(413)
                if client:  # counted as it arrives, kept or not: a refused upload was written up to here too
                    self.ledger.add(client, len(message.get("body", b"")))
                    if self.ledger.used(client) > self.client_upload:
                        raise _Refused(429)
                if upload and received - checked >= self.DISK_CHECK_BYTES:
                    checked = received
                    if self._short_of_disk(0):
                        raise _Refused(507)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracking_send)
        except _Refused as refused:
            if not started:
                await self._refuse(send, refused.status, upload)

    def _short_of_disk(self, incoming: int) -> bool:
        return self.disk is not None and short_of_disk([self.disk], self.min_free, incoming)

    async def _refuse(self, send, status: int, upload: bool) -> None:
        if status == 507:
            text = "The server is short of disk space for uploads; try again later."
        elif status == 429:
            text = (f"Your address uploaded close to {self.client_upload >> 20} MiB within "
                    f"{self.ledger.window_s / 60:.0f} minutes, this server's limit per address; try again later.")
        elif upload:
            text = f"Upload over {self.max_upload} bytes in one request."
        else:
            text = f"Request body over {self.max_body} bytes; send files through the upload route."
        await _answer(send, status, text, as_json=not upload)


def short_of_disk(paths: list[str | os.PathLike], min_free: int, incoming: int = 0) -> bool:
    """Would any of ``paths``' disks have under ``min_free`` bytes free after ``incoming`` more (0: no check)?
    Uploads, run folders and the images Gradio caches for every view all take disk: each is refused before
    it is written, so no caller can fill the disk."""
    return min_free > 0 and any(_free_bytes(str(p)) - incoming < min_free for p in paths)


def _free_bytes(path: str) -> int:
    """Free bytes on the disk ``path`` is (or will be) on: its nearest existing ancestor's."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


async def _answer(send, status: int, text: str, as_json: bool = False) -> None:
    """A refusal: plain text, or (``as_json``, for an event's request) JSON the page shows (``detail`` for a queued
    event, ``error`` for one outside the queue); it reports any other answer to an event as a server response it
    could not parse."""
    body = json.dumps({"detail": text, "error": text}).encode() if as_json else text.encode()
    kind = b"application/json" if as_json else b"text/plain"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class _Refused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _json_values(payload: object) -> Iterator[object]:
    """Every value of a decoded JSON document, containers and dict keys included, depth first."""
    stack = [payload]
    while stack:
        value = stack.pop()
        yield value
        if isinstance(value, dict):
            stack.extend(value.values())
            stack.extend(value.keys())
        elif isinstance(value, list):
            stack.extend(value)


def names_remote_file(payload: object) -> bool:
    """Whether a decoded request body holds a file reference (a dict with a ``path``) whose path is an
    http(s) URL: Gradio fetches such a file into its cache before any handler or validator runs."""
    return any(isinstance(value, dict) and isinstance(value.get("path"), str)
               and value["path"].lstrip().lower().startswith(("http://", "https://"))
               for value in _json_values(payload))


def held_upload(path: str, uploads: str | os.PathLike) -> bool:
    """Whether ``path`` is an existing regular file inside the upload folder ``uploads`` (links resolved: none
    leads out of it)."""
    try:
        real = os.path.realpath(path)
    except (ValueError, OSError):  # e.g. a NUL in the name
        return False
    return real.startswith(os.path.realpath(uploads) + os.sep) and os.path.isfile(real)


def stray_file_reference(payload: object, uploads: str | os.PathLike) -> bool:
    """Whether a decoded request body holds a file reference (a dict with a string ``path``) that is not a
    :func:`held_upload`. Gradio adds every such path under its cache to a component's set of files to delete,
    before any handler runs: its own sweep stopped for good on a folder there (``os.remove`` raises), and
    made-up paths stayed in the set. The app's sweep copes with both; refused here, they never reach a handler
    or a set at all."""
    return any(isinstance(value, dict) and isinstance(value.get("path"), str)
               and not held_upload(value["path"], uploads) for value in _json_values(payload))


# The most JSON values (lists, dicts, their items) and the longest string one request body may hold: the
# largest event (eight files to fine-tune on) sends about 100 values, and paths, names and choices are short.
MAX_BODY_VALUES = 256
MAX_BODY_STRING = 4096


def oversized_values(payload: object) -> str | None:
    """What is too large in a decoded request body (None: nothing): more than MAX_BODY_VALUES values, or a string
    (a key too) over MAX_BODY_STRING characters. Gradio keeps every input's raw value in the session's state
    before any component check or handler runs, and a compact JSON list grows twentyfold as Python objects."""
    for seen, value in enumerate(_json_values(payload), 1):
        if seen > MAX_BODY_VALUES:
            return f"more than {MAX_BODY_VALUES} values"
        if isinstance(value, str) and len(value) > MAX_BODY_STRING:
            return f"a string over {MAX_BODY_STRING} characters"
    return None


class CheckedBodies:
    """ASGI middleware: a request body (other than an upload) that names a file by URL is refused (400), one that
    names a file other than an upload held in ``uploads`` (when given; :func:`stray_file_reference`) too, and one
    with more or longer values than the app's events send (:func:`oversized_values`) too (413).

    Gradio downloads such a file, whatever its size, while it prepares an event's inputs, before the app's
    validators or handlers can refuse it; a public Space would fetch what any caller names. And it keeps every
    input's value in the session's state first, for up to ``KALDN_APP_SESSIONS`` sessions. Mounted inside
    :class:`BodyLimit`, so the body it reads whole is already capped.
    """

    def __init__(self, app: Callable, uploads: str | os.PathLike | None = None) -> None:
        self.app, self.uploads = app, uploads

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH") or _upload_route(scope):
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            payload = None  # not JSON: Gradio refuses it on its own
        if names_remote_file(payload):
            return await _answer(send, 400, "Files must be uploaded through the upload route; a file named by URL "
                                            "is not fetched.", as_json=True)
        if self.uploads is not None and stray_file_reference(payload, self.uploads):
            return await _answer(send, 400, "A file this request names is not an upload this server holds "
                                            "(uploads are deleted after an hour: upload it again).", as_json=True)
        oversized = oversized_values(payload)
        if oversized:
            log.info("refused a request body to %s with %s", scope.get("path", "?")[:80], oversized)
            return await _answer(send, 413, f"Request body with {oversized}: no event of this app sends that "
                                            "(files go through the upload route).", as_json=True)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
