"""Detect people in the fused stream with OpenCV's built-in HOG + linear SVM detector.

    python examples/hog_detector.py tcp://127.0.0.1:5555 [--seconds 30] [--scale 0.5]

(with busref installed; from a checkout without installing, prefix ``PYTHONPATH=.``)

A downstream consumer as it should be written: latest-only (a detector slower than the stream
always works on the newest frame instead of a growing backlog), and it says when the stream
goes silent. The detector ships inside OpenCV, so there is nothing to download. OpenCV 5 moved
``HOGDescriptor`` out of the main ``opencv-python`` wheel into ``opencv-contrib-python``; with
OpenCV 4.x it is in both.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import cv2
import numpy as np

from busref.client import SilenceError, Subscriber


def people_detector() -> cv2.HOGDescriptor:
    """OpenCV's default people detector; exits with what to install where this OpenCV lacks it."""
    if not hasattr(cv2, "HOGDescriptor"):
        # One sentence instead of an AttributeError traceback: the fix is an install, not code.
        sys.exit(f"OpenCV {cv2.__version__} has no HOGDescriptor (OpenCV 5 moved it to the contrib modules): "
                 "pip uninstall opencv-python && pip install opencv-contrib-python, "
                 "or install OpenCV 4.x with pip install 'opencv-python<5'.")
    hog = cv2.HOGDescriptor()
    # The static method as a class attribute: the HOGDescriptor_getDefaultPeopleDetector alias is legacy.
    hog.setSVMDetector(cv2.HOGDescriptor.getDefaultPeopleDetector())
    return hog


def detect(hog: cv2.HOGDescriptor, image: np.ndarray, scale: float) -> list[tuple[list[int], float]]:
    """People boxes ``[x, y, w, h]`` in ``image`` pixels with their SVM scores."""
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale != 1 else image
    boxes, weights = hog.detectMultiScale(small, winStride=(8, 8), padding=(8, 8), scale=1.05)
    return [([round(v / scale) for v in box], float(w)) for box, w in zip(boxes, np.ravel(weights), strict=True)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("endpoint", help="busref publisher endpoint, e.g. tcp://127.0.0.1:5555")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--scale", type=float, default=1.0, help="resize frames by this before detecting")
    parser.add_argument("--min-score", type=float, default=0.3, help="drop weaker detections")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    hog = people_detector()
    started = time.monotonic()
    with Subscriber(args.endpoint, latest_only=True, silence_timeout_s=5.0) as sub:
        try:
            for header, image in sub:
                t0 = time.perf_counter()
                people = [(box, s) for box, s in detect(hog, image, args.scale) if s >= args.min_score]
                print(json.dumps({
                    "seq": header.seq,
                    "t_capture": header.t_capture_rgb,
                    "age_ms": round((time.time() - header.t_capture_rgb) * 1000, 1),
                    "detect_ms": round((time.perf_counter() - t0) * 1000, 1),
                    "people": [{"box": box, "score": round(s, 3)} for box, s in people],
                }), flush=True)
                if args.seconds is not None and time.monotonic() - started > args.seconds:
                    break
        except SilenceError as exc:
            logging.error("%s", exc)
            return 1
        except KeyboardInterrupt:
            pass
    logging.info("skipped %d frames while detecting (latest-only)", sub.stats.superseded)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
