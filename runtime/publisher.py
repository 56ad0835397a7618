"""The ZeroMQ PUB side of the fused stream: bind, send without ever blocking, optional CURVE.

A PUB socket drops messages for a subscriber whose queue (``hwm`` messages) is full, so a
subscriber that stops reading costs the publisher nothing; sends are ``NOBLOCK`` so that a
full pipe can never stall the pipeline either. Subscribers see such losses as gaps in ``seq``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from busref.client.subscriber import configure_common
from busref.client.wire import FrameHeader, StatusHeader
from busref.runtime.wire import encode_frame, encode_status

log = logging.getLogger(__name__)


class PublisherError(RuntimeError):
    """The publisher cannot start: an endpoint cannot be bound or a CURVE key cannot be read."""


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
                self._auth.configure_curve(domain="*", location=str(curve.allowed_clients_dir))
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

    def _bind(self, endpoint: str) -> None:
        if endpoint.startswith("ipc://"):
            folder = Path(endpoint[len("ipc://"):]).parent
            if not folder.is_dir():
                raise PublisherError(f"cannot bind {endpoint}: folder {folder} does not exist")
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as exc:
            raise PublisherError(f"cannot bind {endpoint}: {exc}") from None
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
