"""The daemon's side of the ``busref.frame/1`` format: encoding images and headers into messages.

The format itself (topics, header fields, decoding) is defined once, in :mod:`busref.client.wire`,
which subscribers use without the runtime's dependencies; this module adds what only a
publisher needs (OpenCV's JPEG encoder).
"""

from __future__ import annotations

import cv2
import numpy as np

from busref.client.wire import IMAGE_TOPICS, Encoding, FrameHeader, StatusHeader, header_bytes


def encode_image(image: np.ndarray, encoding: Encoding, *, jpeg_quality: int = 85) -> bytes | memoryview:
    """Payload bytes for ``image`` (uint8 HxWx3 BGR or HxW gray); raw encodings are not copied."""
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    expect_channels = 1 if encoding == "mono8" else 3
    channels = 1 if image.ndim == 2 else image.shape[2]
    if encoding != "jpeg" and channels != expect_channels:
        raise ValueError(f"encoding {encoding} needs {expect_channels} channel(s), image has {channels}")
    if encoding == "jpeg":
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        if not ok:
            raise ValueError("JPEG encoding failed")
        return buf.tobytes()
    return memoryview(np.ascontiguousarray(image)).cast("B")


def encode_frame(
    topic: str, header: FrameHeader, image: np.ndarray, *, jpeg_quality: int = 85
) -> list[bytes | memoryview]:
    """The three message parts for an image; ``header.width/height/encoding`` must describe ``image``."""
    if topic not in IMAGE_TOPICS:
        raise ValueError(f"topic {topic!r} is not an image topic {IMAGE_TOPICS}")
    if image.shape[:2] != (header.height, header.width):
        raise ValueError(
            f"image is {image.shape[1]}x{image.shape[0]}, header says {header.width}x{header.height}"
        )
    payload = encode_image(image, header.encoding, jpeg_quality=jpeg_quality)
    return [topic.encode(), header_bytes(header), payload]


def encode_status(header: StatusHeader) -> list[bytes]:
    return [b"status", header_bytes(header), b""]
