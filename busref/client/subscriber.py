"""Subscribe to a busref stream: ``for header, image in Subscriber("tcp://rig:5555"): ...``.

ZeroMQ reconnects by itself when the publisher restarts or the network comes back; what a
user needs is to *notice* silence. The publisher sends a ``status`` message every second even
when no frames flow, and the subscriber always listens to it as a heartbeat: iteration raises
:class:`SilenceError` when nothing at all arrived for ``silence_timeout_s``.

``latest_only=True`` is for consumers slower than the stream (a detector): a drain thread
reads the socket continuously and keeps only the newest frame of each topic, so the consumer
always gets the freshest frame instead of a growing backlog. (ZeroMQ's CONFLATE option cannot
do this: it does not support multipart messages.)
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq
import zmq.auth

from busref.client.wire import IMAGE_TOPICS, FrameHeader, StatusHeader, WireError, decode_header, decode_image

log = logging.getLogger(__name__)

#: ZMTP heartbeats: a vanished peer (cable pulled, host gone) is detected in ~3 s, its
#: queue freed, and a client reconnects, instead of waiting for TCP's own timeouts.
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 3000

#: How long the socket is polled per step, bounding how late ``close`` or a timeout is noticed.
_POLL_MS = 50


def configure_common(socket: zmq.Socket) -> None:
    """Options both ends (this subscriber and the daemon's publisher) share: no linger on close,
    ZMTP heartbeats."""
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)


class SilenceError(TimeoutError):
    """Nothing (not even a 1 Hz status heartbeat) arrived for the subscriber's silence timeout."""


@dataclass(frozen=True)
class CurveClientKeys:
    """A client's CURVE key pair and the publisher's public key (Z85 bytes)."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def from_files(
        cls, server_public_key_file: str | Path, client_secret_key_file: str | Path
    ) -> CurveClientKeys:
        """Read ``server.key`` and the client's ``NAME.key_secret`` (``busref keys generate``)."""
        server_public, _ = zmq.auth.load_certificate(server_public_key_file)
        public, secret = zmq.auth.load_certificate(client_secret_key_file)
        if secret is None:
            raise ValueError(f"{client_secret_key_file} holds no secret key (give the .key_secret file)")
        return cls(server_public=server_public, public=public, secret=secret)


@dataclass
class SubscriberStats:
    received: int = 0  # image messages taken off the socket
    delivered: int = 0  # images handed to the caller
    superseded: int = 0  # latest-only: images replaced by a newer one before the caller took them
    lost: int = 0  # gaps in seq: dropped by the publisher, the network or a full queue
    invalid: int = 0  # messages that did not decode (logged)
    status: int = 0  # status heartbeats
    restarts: int = 0  # publisher restarts seen: a status whose uptime_s is below the one before


class Subscriber:
    """A SUB socket on one or more endpoints yielding ``(FrameHeader, image)``.

    ``topics`` are image topics (``fused``, ``registered_ir``); ``status`` is always
    subscribed as the heartbeat and kept in :attr:`last_status`, never yielded.
    ``image`` is uint8 HxWx3 BGR (bgr8, jpeg) or HxW (mono8).
    """

    def __init__(
        self,
        endpoint: str | Sequence[str],
        topics: Sequence[str] = ("fused",),
        *,
        latest_only: bool = False,
        curve: CurveClientKeys | None = None,
        silence_timeout_s: float | None = 5.0,
        rcvhwm: int = 4,
        context: zmq.Context | None = None,
    ) -> None:
        bad = [t for t in topics if t not in IMAGE_TOPICS]
        if bad or not topics:
            raise ValueError(f"topics must be a non-empty subset of {IMAGE_TOPICS}, got {list(topics)}")
        self.topics = tuple(topics)
        self.latest_only = latest_only
        self.silence_timeout_s = silence_timeout_s
        self.stats = SubscriberStats()
        self.last_status: StatusHeader | None = None
        self._last_seq: dict[str, int] = {}
        self._last_message = time.monotonic()
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._socket = self._context.socket(zmq.SUB)
        configure_common(self._socket)
        self._socket.setsockopt(zmq.RCVHWM, rcvhwm)
        self._socket.setsockopt(zmq.RECONNECT_IVL, 100)
        self._socket.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        if curve is not None:
            self._socket.curve_serverkey = curve.server_public
            self._socket.curve_publickey = curve.public
            self._socket.curve_secretkey = curve.secret
        for topic in (*self.topics, "status"):
            self._socket.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self.endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        for ep in self.endpoints:
            self._socket.connect(ep)
        # latest-only state: newest undelivered message per topic, in arrival order
        self._pending: dict[str, tuple[int, FrameHeader, bytes]] = {}
        self._arrival = itertools.count()
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._drain: threading.Thread | None = None
        if latest_only:
            self._drain = threading.Thread(target=self._drain_loop, name="subscriber-drain", daemon=True)
            self._drain.start()

    # -- socket side (the iterating thread, or the drain thread in latest-only mode) --------

    def _read(self, timeout_ms: int) -> tuple[str, FrameHeader, bytes] | None:
        """One image message off the socket (status handled here); None when nothing came."""
        if not self._socket.poll(timeout_ms):
            return None
        parts = self._socket.recv_multipart(copy=True)
        self._last_message = time.monotonic()
        try:
            topic, header = decode_header(parts)
        except WireError as exc:
            self.stats.invalid += 1
            log.warning("ignoring a message from %s: %s", ",".join(self.endpoints), exc)
            return None
        if isinstance(header, StatusHeader):
            self.stats.status += 1
            if self.last_status is not None and header.uptime_s < self.last_status.uptime_s:
                self.stats.restarts += 1
            self.last_status = header
            return None
        self.stats.received += 1
        last = self._last_seq.get(topic)
        if last is not None and header.seq > last + 1:
            self.stats.lost += header.seq - last - 1
        self._last_seq[topic] = header.seq
        return topic, header, parts[2]

    def _drain_loop(self) -> None:
        while not self._closing.is_set():
            item = self._read(_POLL_MS)
            if item is None:
                continue
            with self._cond:
                if item[0] in self._pending:
                    self.stats.superseded += 1
                self._pending[item[0]] = (next(self._arrival), item[1], item[2])
                self._cond.notify()

    # -- caller side ---------------------------------------------------------------------------

    @property
    def seconds_since_last_message(self) -> float:
        """Seconds since anything (frame or heartbeat) arrived, or since the subscriber started."""
        return time.monotonic() - self._last_message

    def recv(self, timeout_s: float | None = None) -> tuple[str, FrameHeader, np.ndarray] | None:
        """The next (latest-only: newest) image as ``(topic, header, image)``; None after ``timeout_s``.

        Raises :class:`~busref.client.wire.WireError` only for an image whose payload does not decode.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._closing.is_set():
            remaining_ms = _POLL_MS if deadline is None else int(max(0.0, deadline - time.monotonic()) * 1000)
            item = self._take(min(_POLL_MS, remaining_ms))
            if item is not None:
                topic, header, payload = item
                image = decode_image(header, payload, topic=topic)
                self.stats.delivered += 1
                return topic, header, image
            if deadline is not None and time.monotonic() >= deadline:
                return None
        return None

    def _take(self, timeout_ms: int) -> tuple[str, FrameHeader, bytes] | None:
        if not self.latest_only:
            return self._read(timeout_ms)
        with self._cond:
            if not self._pending:
                self._cond.wait(timeout_ms / 1000)
            if not self._pending:
                return None
            topic = min(self._pending, key=lambda t: self._pending[t][0])
            _, header, payload = self._pending.pop(topic)
            return topic, header, payload

    def __iter__(self) -> Iterator[tuple[FrameHeader, np.ndarray]]:
        """Yield ``(header, image)`` until closed; :class:`SilenceError` after the silence timeout."""
        while not self._closing.is_set():
            try:
                item = self.recv(timeout_s=0.25)
            except WireError as exc:
                self.stats.invalid += 1
                log.warning("ignoring an image from %s: %s", ",".join(self.endpoints), exc)
                continue
            if item is not None:
                yield item[1], item[2]
                continue
            silent = self.seconds_since_last_message
            if self.silence_timeout_s is not None and silent > self.silence_timeout_s:
                raise SilenceError(
                    f"nothing from {', '.join(self.endpoints)} for {silent:.1f} s "
                    "(is the publisher running, the endpoint right, the CURVE key allowed?)"
                )

    def close(self) -> None:
        """Stop the drain thread and close the socket; safe to call twice."""
        self._closing.set()
        if self._drain is not None:
            self._drain.join(timeout=2.0)
        if not self._socket.closed:
            self._socket.close(linger=0)
        if self._own_context and not self._context.closed:
            self._context.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

