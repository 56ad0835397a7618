"""The ZeroMQ PUB side of the fused stream: bind, send without ever blocking, optional CURVE.

A PUB socket drops messages for a subscriber whose queue (``hwm`` messages) is full, so a
subscriber that stops reading costs the publisher nothing; sends are ``NOBLOCK`` so that a
full pipe can never stall the pipeline either. Subscribers see such losses as gaps in ``seq``.

With CURVE, the handshakes refused (a key not in the allow-list, a client without CURVE) are
counted and logged, at most one line a minute (:class:`CurveRefusals`).
"""

from __future__ import annotations

import collections
import errno
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from busref.client.subscriber import configure_common
from busref.client.wire import FrameHeader, StatusHeader
from busref.runtime.wire import encode_frame, encode_status

log = logging.getLogger(__name__)


class PublisherError(RuntimeError):
    """The publisher cannot start: an endpoint cannot be bound or a CURVE key cannot be read."""


class EndpointError(PublisherError):
    """An endpoint that cannot work on this machine as written (a configuration error, unlike a
    port that is busy now): an unknown transport, an ipc folder that does not exist, an ipc
    path too long for a socket address."""


#: ZeroMQ bind errors that say the endpoint itself is wrong (see :class:`EndpointError`).
_ENDPOINT_ERRNOS = {errno.EPROTONOSUPPORT, errno.ENOENT, errno.ENAMETOOLONG, errno.EINVAL}
#: Monitor events of a handshake the server refused: an unknown key (ZAP said 400), a client
#: without CURVE or another protocol error, or a failure libzmq gives no detail for.
_REFUSALS = {zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth", zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",
             zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "no detail"}
#: Refusals logged: the first at once, the rest as one summary line per this many seconds.
REFUSAL_LOG_PERIOD_S = 60.0


@dataclass(frozen=True)
class CurveServerKeys:
    """The publisher's CURVE key pair (Z85 bytes) and the folder of allowed clients' public keys."""

    public: bytes
    secret: bytes
    allowed_clients_dir: Path

    @classmethod
    def from_files(cls, server_secret_key_file: Path, allowed_clients_dir: Path) -> CurveServerKeys:
        """Read a ``.key_secret`` certificate (``zmq.auth.create_certificates``) and check the folder."""
        try:
            public, secret = zmq.auth.load_certificate(server_secret_key_file)
        except (OSError, ValueError) as exc:
            raise PublisherError(f"cannot read CURVE server key {server_secret_key_file}: {exc}") from None
        if secret is None:
            raise PublisherError(f"{server_secret_key_file} holds no secret key (give the .key_secret file)")
        if not allowed_clients_dir.is_dir():
            raise PublisherError(f"CURVE allowed_clients_dir {allowed_clients_dir} is not a folder")
        if not any(allowed_clients_dir.glob("*.key")):
            log.warning("CURVE allow-list %s has no *.key files: no client can connect", allowed_clients_dir)
        return cls(public=public, secret=secret, allowed_clients_dir=allowed_clients_dir)


class _AllowList:
    """The ZAP credentials check: a client's public key must be one of the folder's ``*.key``
    files (read once, at start-up, as ``configure_curve`` would); remembers the last key refused."""

    def __init__(self, folder: Path) -> None:
        self.keys = set(zmq.auth.load_certificates(str(folder)))
        self.last_refused: bytes | None = None

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        self.last_refused = key
        return False


class CurveRefusals(threading.Thread):
    """Counts the handshakes a CURVE socket refuses (``count``) and logs them at a rate limit.

    Reads the socket's monitor events on its own thread. A client that keeps retrying is
    refused, and counted, at each attempt; the log gets the first refusal at once and then at
    most one summary line per :data:`REFUSAL_LOG_PERIOD_S`.
    """

    def __init__(self, socket: zmq.Socket, allow_list: _AllowList, allowed_clients_dir: Path) -> None:
        super().__init__(name="curve-refusals", daemon=True)
        self._monitor = socket.get_monitor_socket(sum(_REFUSALS))
        self._allow_list, self._folder = allow_list, allowed_clients_dir
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._count = 0
        self._quiet_until = 0.0  # refusals before this time go into the next summary
        self._summary: collections.Counter[str] = collections.Counter()

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    def run(self) -> None:
        while not self._halt.is_set():
            if self._monitor.poll(200):
                event = recv_monitor_message(self._monitor)
                if event["event"] in _REFUSALS:
                    self._refused(self._reason(event["event"], event["value"]))
            if self._summary and time.monotonic() >= self._quiet_until:
                self._log_summary()
        self._monitor.close(linger=0)

    def _reason(self, event: int, value: int) -> str:
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            key = self._allow_list.last_refused
            who = f"key {key.decode()}" if key else "its key"
            return f"{who} is not in {self._folder}"
        if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return "the client does not use CURVE"
        return f"handshake failed ({_REFUSALS[event]}, code {value:#x})"

    def _refused(self, reason: str) -> None:
        with self._lock:
            self._count += 1
        now = time.monotonic()
        if now >= self._quiet_until:
            log.warning("CURVE refused a client: %s (refusals are counted in curve_refused_total; more of them "
                        "are logged once a minute)", reason)
            self._quiet_until = now + REFUSAL_LOG_PERIOD_S
        else:
            self._summary[reason] += 1

    def _log_summary(self) -> None:
        reasons = "; ".join(f"{n} x {reason}" for reason, n in self._summary.most_common())
        log.warning("CURVE refused %d more handshakes in the last %.0f s: %s", sum(self._summary.values()),
                    REFUSAL_LOG_PERIOD_S, reasons)
        self._summary.clear()
        self._quiet_until = time.monotonic() + REFUSAL_LOG_PERIOD_S

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(1.0)
        elif not self._monitor.closed:  # never started
            self._monitor.close(linger=0)


class Publisher:
    """A bound PUB socket; thread-safe ``publish_*`` methods (one lock serialises socket use).

    ``sent`` counts messages handed to ZeroMQ, ``dropped`` those it refused (a per-subscriber
    queue overflow is silent in ZeroMQ: subscribers see it as ``seq`` gaps).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        hwm: int = 2,
        curve: CurveServerKeys | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        # CURVE's ZAP handler is per context: give a secured publisher a context of its own.
        self._own_context = context is None or curve is not None
        self._context = zmq.Context() if self._own_context else context
        self._lock = threading.Lock()
        self._auth: ThreadAuthenticator | None = None
        self._refusals: CurveRefusals | None = None
        self.sent = 0
        self.dropped = 0
        self.endpoints: list[str] = []
        self._socket = self._context.socket(zmq.PUB)
        try:
            configure_common(self._socket)
            self._socket.setsockopt(zmq.SNDHWM, hwm)
            if curve is not None:
                self._auth = ThreadAuthenticator(self._context, log=logging.getLogger(f"{__name__}.auth"))
                self._auth.start()
                allow_list = _AllowList(curve.allowed_clients_dir)
                self._auth.configure_curve_callback(domain="*", credentials_provider=allow_list)
                self._refusals = CurveRefusals(self._socket, allow_list, curve.allowed_clients_dir)
                self._refusals.start()
                self._socket.curve_secretkey = curve.secret
                self._socket.curve_publickey = curve.public
                self._socket.curve_server = True
            for endpoint in endpoints:
                self._bind(endpoint)
        except BaseException:
            self.close()
            raise
        log.info("publishing on %s (hwm %d%s)", ", ".join(self.endpoints), hwm,
                 ", CURVE with client allow-list" if curve else "")

    @property
    def curve_refused(self) -> int:
        """Handshakes CURVE refused since start (0 without CURVE)."""
        return self._refusals.count if self._refusals is not None else 0

    def _bind(self, endpoint: str) -> None:
        if endpoint.startswith("ipc://"):
            folder = Path(endpoint[len("ipc://"):]).parent
            if not folder.is_dir():
                raise EndpointError(f"cannot bind {endpoint}: folder {folder} does not exist")
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as exc:
            error = EndpointError if exc.errno in _ENDPOINT_ERRNOS else PublisherError
            raise error(f"cannot bind {endpoint}: {exc}") from None
        # LAST_ENDPOINT resolves wildcards ("tcp://127.0.0.1:*") to the port actually bound.
        self.endpoints.append(self._socket.getsockopt_string(zmq.LAST_ENDPOINT))

    def send(self, parts: Sequence[bytes | memoryview]) -> bool:
        """Send one multipart message without blocking; False (and counted) when ZeroMQ refused it."""
        with self._lock:
            try:
                self._socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self.dropped += 1
                return False
            self.sent += 1
            return True

    def publish_frame(
        self, topic: str, header: FrameHeader, image: np.ndarray, *, jpeg_quality: int = 85
    ) -> bool:
        return self.send(encode_frame(topic, header, image, jpeg_quality=jpeg_quality))

    def publish_status(self, status: StatusHeader) -> bool:
        return self.send(encode_status(status))

    def close(self, linger_ms: int = 0) -> None:
        """Close the socket (queued messages get ``linger_ms`` to leave), stop the authenticator.

        Safe to call twice.
        """
        with self._lock:
            if self._refusals is not None:
                if not self._socket.closed:
                    self._socket.disable_monitor()
                self._refusals.stop()
                self._refusals = None
            if not self._socket.closed:
                self._socket.close(linger=linger_ms)
            if self._auth is not None:
                self._auth.stop()
                self._auth = None
            if self._own_context and not self._context.closed:
                self._context.term()
            # libzmq leaves ipc socket files behind; a stale one confuses whoever looks for the daemon.
            for endpoint in self.endpoints:
                path = Path(endpoint.removeprefix("ipc://"))
                if endpoint.startswith("ipc://") and path.is_socket():
                    path.unlink(missing_ok=True)
            self.endpoints = []

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
