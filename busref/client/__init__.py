"""Read a busref stream with nothing but pyzmq and numpy (``pip install 'busref[client]'``).

::

    from busref.client import Subscriber

    with Subscriber("tcp://127.0.0.1:5555", latest_only=True) as sub:
        for header, image in sub:
            print(header.seq, header.registration.source, image.shape)

:mod:`busref.client.wire` defines the ``busref.frame/1`` message format (for clients in other
languages too); :mod:`busref.client.subscriber` the subscriber. OpenCV is imported only to
decode a JPEG payload. Nothing here imports the daemon, pydantic or torch.
"""

from __future__ import annotations

from busref.client.subscriber import CurveClientKeys, SilenceError, Subscriber, SubscriberStats
from busref.client.wire import (
    FRAME_SCHEMA,
    IMAGE_TOPICS,
    STATUS_SCHEMA,
    TOPICS,
    FrameHeader,
    Registration,
    StatusHeader,
    WireError,
    decode_header,
    decode_image,
    decode_message,
)

__all__ = [
    "FRAME_SCHEMA",
    "IMAGE_TOPICS",
    "STATUS_SCHEMA",
    "TOPICS",
    "CurveClientKeys",
    "FrameHeader",
    "Registration",
    "SilenceError",
    "StatusHeader",
    "Subscriber",
    "SubscriberStats",
    "WireError",
    "decode_header",
    "decode_image",
    "decode_message",
]
