"""``busref watch ENDPOINT``: subscribe to a fused stream, print fps and latency, optionally save it.

Latency is measured against this machine's clock: capture -> receive (the older capture of
the pair, as the daemon measures it) and publish -> receive; across hosts it is only as good
as their clock synchronisation.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import cv2
import numpy as np

from busref.client import CurveClientKeys, Subscriber
from busref.client.wire import IMAGE_TOPICS, FrameHeader
from busref.runtime import exit_codes
from busref.runtime.logs import setup_logging

log = logging.getLogger("busref.watch")

THUMB_WIDTH = 320
SHEET_COLUMNS = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("endpoint", help="publisher endpoint, e.g. tcp://127.0.0.1:5555 or ipc:///run/busref.sock")
    parser.add_argument("--topic", choices=IMAGE_TOPICS, default="fused")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long (default: Ctrl-C)")
    parser.add_argument("--latest-only", action="store_true", help="skip frames this viewer is too slow for")
    parser.add_argument("--save-dir", type=Path, help="write every received frame here as SEQ.jpg")
    parser.add_argument("--video", type=Path, help="write the stream to this video file (.mp4 or .avi)")
    parser.add_argument("--video-fps", type=float, default=30.0, help="frame rate written into --video")
    parser.add_argument("--contact-sheet", type=Path, metavar="FILE",
                        help="write a grid of frames spread over the run to this image")
    parser.add_argument("--sheet-frames", type=int, default=12, help="frames on the contact sheet")
    parser.add_argument("--server-key", type=Path, help="CURVE: the publisher's public .key file")
    parser.add_argument("--client-key", type=Path, help="CURVE: this client's .key_secret file")
    parser.add_argument("--silence", type=float, default=5.0, metavar="SECONDS",
                        help="warn when nothing (not even the 1 Hz status) arrives for this long")


class ContactSheet:
    """Keeps thumbnails spread evenly over a stream of unknown length (decimating as it grows)."""

    def __init__(self, frames: int) -> None:
        self.frames = frames
        self._thumbs: list[tuple[int, float, np.ndarray]] = []
        self._stride = 1
        self._seen = 0

    def add(self, header: FrameHeader, image: np.ndarray, t_offset: float) -> None:
        index = self._seen
        self._seen += 1
        if index % self._stride:
            return
        scale = THUMB_WIDTH / image.shape[1]
        thumb = cv2.resize(image, (THUMB_WIDTH, max(1, round(image.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
        if thumb.ndim == 2:
            thumb = cv2.cvtColor(thumb, cv2.COLOR_GRAY2BGR)
        self._thumbs.append((header.seq, t_offset, thumb))
        if len(self._thumbs) >= 4 * self.frames:
            self._thumbs = self._thumbs[::2]
            self._stride *= 2

    def render(self) -> np.ndarray | None:
        if not self._thumbs:
            return None
        picks = np.linspace(0, len(self._thumbs) - 1, min(self.frames, len(self._thumbs))).round().astype(int)
        tiles = []
        for i in picks:
            seq, t, thumb = self._thumbs[i]
            tile = thumb.copy()
            cv2.putText(tile, f"#{seq} +{t:.1f}s", (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3)
            cv2.putText(tile, f"#{seq} +{t:.1f}s", (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1)
            tiles.append(tile)
        h = max(t.shape[0] for t in tiles)
        tiles = [cv2.copyMakeBorder(t, 0, h - t.shape[0], 0, 0, cv2.BORDER_CONSTANT) for t in tiles]
        blank = np.zeros_like(tiles[0])
        rows = [tiles[i:i + SHEET_COLUMNS] for i in range(0, len(tiles), SHEET_COLUMNS)]
        if len(rows) > 1:  # hconcat needs equal rows: pad the last one
            rows[-1] += [blank] * (SHEET_COLUMNS - len(rows[-1]))
        return cv2.vconcat([cv2.hconcat(row) for row in rows])


class Recorder:
    """The outputs asked for: a folder of frames, a video, a contact sheet."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.save_dir: Path | None = args.save_dir
        if self.save_dir is not None:
            self.save_dir.mkdir(parents=True, exist_ok=True)
        self.video_path: Path | None = args.video
        self.video_fps: float = args.video_fps
        self._video: cv2.VideoWriter | None = None
        self.sheet_path: Path | None = args.contact_sheet
        self.sheet = ContactSheet(args.sheet_frames) if self.sheet_path is not None else None

    def add(self, header: FrameHeader, image: np.ndarray, t_offset: float) -> None:
        if self.save_dir is not None:
            cv2.imwrite(str(self.save_dir / f"{header.seq:08d}.jpg"), image)
        if self.video_path is not None:
            bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image
            if self._video is None:
                fourcc = cv2.VideoWriter_fourcc(*("mp4v" if self.video_path.suffix.lower() == ".mp4" else "MJPG"))
                self._video = cv2.VideoWriter(str(self.video_path), fourcc, self.video_fps,
                                              (bgr.shape[1], bgr.shape[0]))
                if not self._video.isOpened():
                    raise OSError(f"cannot write video {self.video_path}")
            self._video.write(bgr)
        if self.sheet is not None:
            self.sheet.add(header, image, t_offset)

    def close(self) -> None:
        if self._video is not None:
            self._video.release()
            log.info("video written to %s", self.video_path)
        if self.sheet is not None and self.sheet_path is not None:
            sheet = self.sheet.render()
            if sheet is not None:
                cv2.imwrite(str(self.sheet_path), sheet)
                log.info("contact sheet written to %s", self.sheet_path)


def run(args: argparse.Namespace) -> int:
    setup_logging("DEBUG" if getattr(args, "verbose", False) else "INFO")
    curve = None
    if args.server_key or args.client_key:
        if not (args.server_key and args.client_key):
            log.error("CURVE needs both --server-key and --client-key")
            return exit_codes.BAD_CONFIG
        try:
            curve = CurveClientKeys.from_files(args.server_key, args.client_key)
        except (OSError, ValueError) as exc:
            log.error("cannot read the CURVE keys: %s", exc)
            return exit_codes.BAD_CONFIG
    recorder = Recorder(args)
    started = time.monotonic()
    frames = 0
    window: list[tuple[float, float]] = []  # (capture->receive, publish->receive) latencies in this second
    last_report = started
    warned_silence = False
    try:
        with Subscriber(args.endpoint, (args.topic,), latest_only=args.latest_only, curve=curve,
                        silence_timeout_s=None) as sub:
            while args.seconds is None or time.monotonic() - started < args.seconds:
                got = sub.recv(timeout_s=0.25)
                now = time.monotonic()
                if got is not None:
                    _, header, image = got
                    received = time.time()
                    frames += 1
                    warned_silence = False
                    window.append((received - min(header.t_capture_ir, header.t_capture_rgb),
                                   received - header.t_publish))
                    recorder.add(header, image, now - started)
                elif sub.seconds_since_last_message > args.silence and not warned_silence:
                    log.warning("nothing from %s for %.0f s", args.endpoint, sub.seconds_since_last_message)
                    warned_silence = True
                if now - last_report >= 1.0:
                    _report(window, now - last_report, sub)
                    window, last_report = [], now
    except KeyboardInterrupt:
        pass
    finally:
        recorder.close()
    elapsed = time.monotonic() - started
    print(f"received {frames} frames in {elapsed:.1f} s ({frames / max(elapsed, 1e-9):.1f} fps)")
    return exit_codes.OK if frames else exit_codes.NO_DATA


def _publisher_state(sub: Subscriber) -> str:
    """The last status's state, with its ``message`` (the faults) when it has one."""
    status = sub.last_status
    if status is None:
        return "no status"
    return f"{status.state}: {status.message}" if status.message else status.state


def _report(window: list[tuple[float, float]], seconds: float, sub: Subscriber) -> None:
    if not window:
        print(f"fps  0.0   (publisher: {_publisher_state(sub)})", flush=True)
        return
    lat = np.asarray(window) * 1000.0
    p50, p99 = np.percentile(lat[:, 0], (50, 99))
    faults = f"   (publisher: {_publisher_state(sub)})" if sub.last_status and sub.last_status.message else ""
    print(f"fps {len(window) / seconds:5.1f}   capture->receive p50 {p50:6.1f} ms  p99 {p99:6.1f} ms   "
          f"publish->receive p50 {np.percentile(lat[:, 1], 50):5.1f} ms   lost {sub.stats.lost}{faults}", flush=True)
