"""``busref doctor``: what this machine can run, and the GPU checks where it has a GPU. No torch needed.

Sections, each reported as OK / FAILED / SKIPPED with the reason:

* environment: Python, packages, ONNX Runtime providers, OpenCV GStreamer support, GPU;
* graphs: ``register.onnx`` / ``fuse.onnx`` (and ``frame.onnx``, optional: older exports lack
  it) pass the export checks (:mod:`busref.export.onnx_check`);
* CUDA: device buffers round-trip through cuda-python (the TensorRT backend's memory path);
* ONNX Runtime CUDA vs CPU parity on sample pairs (where ORT has the CUDA provider);
* TensorRT: build the engines, verify them against ONNX Runtime, time them (fuse, frame at 640x512):
  frames per second and p99 latency, uploads and downloads included.

Exit status 0 when nothing FAILED (SKIPPED is not a failure), 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import platform
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from busref.rig_config.resources import WEIGHTS_ENV, weights_dir

log = logging.getLogger("busref.doctor")

#: The fuse timing size (H x W): a 640x512 thermal-class frame, the size the speed targets are set at.
TIMING_HW = (512, 640)
#: ORT CUDA vs CPU: cuDNN picks other convolution algorithms (and TF32 on Ampere+), so the two
#: agree to about 1e-3, not bit for bit.
ORT_CUDA_TOLERANCE = 5e-3
PACKAGES = ("numpy", "cv2", "onnxruntime", "onnx", "pydantic", "zmq", "torch", "tensorrt", "cuda")


@dataclass
class Check:
    name: str
    status: str  # OK, FAILED, SKIPPED, INFO
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


def _version(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    except Exception as exc:  # a broken install (missing shared library) raises other errors
        return f"broken ({type(exc).__name__}: {exc})"
    if module == "cuda":
        try:
            from importlib.metadata import version

            return version("cuda-python")
        except Exception:
            return getattr(mod, "__version__", "installed")
    return str(getattr(mod, "__version__", "installed"))


def environment() -> tuple[list[Check], Any]:
    """Package versions, providers, GStreamer, and the GPU platform (or None)."""
    checks = [Check("python", "INFO", f"{platform.python_version()} on {platform.machine()} ({platform.platform()})")]
    versions = {name: _version(name) for name in PACKAGES}
    checks.append(Check("packages", "INFO", ", ".join(f"{k} {v or 'missing'}" for k, v in versions.items()),
                        {"versions": versions}))
    try:
        import onnxruntime as ort

        checks.append(Check("onnxruntime providers", "INFO", ", ".join(ort.get_available_providers())))
    except ImportError:
        checks.append(Check("onnxruntime providers", "FAILED", "onnxruntime is not installed"))
    try:
        import cv2

        gst = any("GStreamer" in line and "YES" in line for line in cv2.getBuildInformation().splitlines())
        checks.append(Check("opencv gstreamer", "INFO", "yes" if gst else "no (GStreamer camera pipelines "
                                                                          "need the system OpenCV)"))
    except ImportError:
        pass
    gpu = None
    try:
        from busref.runtime.backends.base import BackendUnavailable
        from busref.runtime.backends.tensorrt import gpu_platform

        try:
            gpu = gpu_platform(versions["tensorrt"] or "none")
            checks.append(Check("gpu", "INFO", f"{gpu.gpu_name}, compute capability {gpu.compute_capability}, "
                                               f"CUDA runtime {gpu.cuda_version}", asdict(gpu)))
        except BackendUnavailable as exc:
            checks.append(Check("gpu", "INFO", f"none usable: {exc}"))
    except ImportError as exc:
        checks.append(Check("gpu", "INFO", f"not probed: {exc}"))
    return checks, gpu


def check_graphs(weights: Path) -> tuple[list[Check], dict[str, Path]]:
    """The export checks on each graph; returns the graphs that passed."""
    try:
        from busref.export.onnx_check import check_graph_file
    except ImportError as exc:
        return [Check("graphs", "SKIPPED", f"the onnx package is missing ({exc})")], {}
    from busref.runtime.artifact import ArtifactError

    checks, good = [], {}
    optional = {"track": "every registration run is a register-graph run",
                "frame": "GPU backends warp on the CPU"}
    for graph in ("register", "track", "fuse", "frame"):
        path = weights / f"{graph}.onnx"
        if graph in optional and not path.is_file():
            checks.append(Check(f"graph {graph}", "SKIPPED", f"{path} is not there (exported without it): "
                                                             f"{optional[graph]}"))
            continue
        try:
            checked = check_graph_file(path, graph=graph)
        except ArtifactError as exc:
            checks.append(Check(f"graph {graph}", "FAILED", str(exc)))
            continue
        good[graph] = path
        m = checked.metadata
        checks.append(Check(f"graph {graph}", "OK", f"{path}: {m.model_id}, opset {m.opset}, "
                                                    f"split {m.training_split or '?'}"))
    return checks, good


def check_cuda_buffers() -> Check:
    """Upload and download an array through the backend's DeviceBuffer/CudaStream."""
    from busref.runtime.backends.tensorrt import CudaStream, DeviceBuffer, load_cudart

    cudart = load_cudart()
    data = np.random.default_rng(0).random((1, 1, *TIMING_HW), dtype=np.float32)
    back = np.zeros_like(data)
    stream = CudaStream(cudart)
    buffer = DeviceBuffer(cudart, data.nbytes)
    try:
        handle = stream.handle  # the integer TensorRT's execute_async_v3 takes
        buffer.upload(data, stream)
        buffer.download(back, stream)
        stream.synchronize()
    finally:
        buffer.close()
        stream.close()
    same = bool(np.array_equal(data, back))
    return Check("cuda buffers", "OK" if same else "FAILED",
                 f"{data.nbytes} bytes to the GPU and back on stream {handle:#x}: "
                 f"{'identical' if same else 'DIFFERENT'}")


def _feeds(graph: str, meta: Any, hw: tuple[int, int] = TIMING_HW) -> dict[str, np.ndarray]:
    """One synthetic input of ``graph`` at ``hw`` (the register and track graphs at their own size; the
    frame graph's IR at ``hw`` too)."""
    from busref.export.samples import graph_feed, synthetic_pairs
    from busref.runtime.artifact import REGISTRATION_GRAPHS

    size = tuple(meta.registration_size) if graph in REGISTRATION_GRAPHS else hw
    return graph_feed(graph, synthetic_pairs(1, hw)[0], size)


def check_ort_cuda(graphs: dict[str, Path]) -> list[Check]:
    from busref.runtime.backends.onnxruntime import CPU, CUDA, OnnxRuntimeBackend

    checks = []
    for graph, path in graphs.items():
        gpu = OnnxRuntimeBackend(path, graph=graph, providers=(CUDA, CPU))
        if gpu.device != "cuda":
            checks.append(Check(f"ort cuda {graph}", "FAILED", f"ONNX Runtime lists CUDA but runs on {gpu.providers} "
                                                               "(CUDA or cuDNN libraries missing?)"))
            continue
        cpu = OnnxRuntimeBackend(path, graph=graph, providers=(CPU,))
        feed = _feeds(graph, cpu.metadata)
        a, b = gpu.run(feed), cpu.run(feed)
        diffs = {k: float(np.abs(a[k] - b[k]).max()) for k in b}
        worst = max(diffs.values())
        checks.append(Check(f"ort cuda {graph}", "OK" if worst <= ORT_CUDA_TOLERANCE else "FAILED",
                            "max |CUDA - CPU| " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
                            + f" (tolerance {ORT_CUDA_TOLERANCE:g})", {"max_abs_diff": diffs}))
    return checks


def check_tensorrt(graphs: dict[str, Path], engine_dir: Path, precision: str, iterations: int) -> list[Check]:
    """Build, verify and time each graph's engine."""
    from busref.export import build_engine as be
    from busref.export.samples import synthetic_pairs
    from busref.runtime.backends.tensorrt import TensorRTBackend

    checks = []
    for graph, path in graphs.items():
        engine = engine_dir / f"{graph}.{precision}.engine"
        hw = TIMING_HW if graph in ("fuse", "frame") else None
        request = be.BuildRequest(path, engine, precision=precision, min_hw=hw, opt_hw=hw, max_hw=hw,
                                  timing_cache=engine_dir / "timing.cache")
        try:
            header = be.build(request)
        except (be.BuildError, ValueError) as exc:
            checks.append(Check(f"tensorrt build {graph}", "FAILED", str(exc)))
            continue
        checks.append(Check(f"tensorrt build {graph}", "OK", f"{engine} ({header.plan_size / 1e6:.1f} MB, "
                                                             f"{precision}, TensorRT {header.tensorrt_version})"))
        results = be.verify(engine, path, synthetic_pairs(2, TIMING_HW))
        checks.append(Check(f"tensorrt verify {graph}", "OK" if all(c.ok for c in results) else "FAILED",
                            "; ".join(f"{c.name} max diff {c.max_abs_diff:.2e} (tol {c.tolerance:g}), "
                                      f"PSNR {c.psnr_db:.1f} dB" for c in results),
                            {"outputs": [asdict(c) for c in results]}))
        backend = TensorRTBackend(engine, graph=graph, onnx_path=path)
        try:
            t = be.time_backend(backend, _feeds(graph, header.metadata), iterations=iterations)
        finally:
            backend.close()
        checks.append(Check(f"tensorrt timing {graph}", "INFO",
                            f"{t.size[1]}x{t.size[0]}: {t.fps:.0f} fps, p50 {t.p50_ms:.2f} ms, p99 {t.p99_ms:.2f} ms "
                            f"over {t.iterations} runs (copies included)", asdict(t)))
    return checks


def _guarded(name: str, step: Callable[[], list[Check] | Check]) -> list[Check]:
    """Run one section; an unexpected error becomes a FAILED check instead of ending the report."""
    try:
        result = step()
    except Exception as exc:
        log.debug("%s", name, exc_info=True)
        return [Check(name, "FAILED", f"{type(exc).__name__}: {exc}")]
    return result if isinstance(result, list) else [result]


def diagnose(weights: Path, engine_dir: Path | None, precision: str, iterations: int) -> list[Check]:
    checks, gpu = environment()
    graph_checks, graphs = check_graphs(weights)
    checks += graph_checks
    if gpu is None:
        checks.append(Check("gpu checks", "SKIPPED", "no CUDA GPU visible to cuda-python"))
        return checks
    checks += _guarded("cuda buffers", check_cuda_buffers)
    import onnxruntime as ort

    if not graphs:
        checks.append(Check("gpu model checks", "SKIPPED", f"no valid graphs in {weights} "
                                                          "(busref export onnx --checkpoint ... --out DIR)"))
        return checks
    if "CUDAExecutionProvider" in ort.get_available_providers():
        checks += _guarded("ort cuda", lambda: check_ort_cuda(graphs))
    else:
        checks.append(Check("ort cuda", "SKIPPED", "ONNX Runtime has no CUDA provider (the 'onnxruntime' wheel is "
                                                   "CPU-only; install 'onnxruntime-gpu' instead)"))
    if _version("tensorrt") is None:
        checks.append(Check("tensorrt", "SKIPPED", "TensorRT is not installed (its PyPI wheels fetch from "
                                                   "NVIDIA's own index)"))
        return checks
    if engine_dir is not None:
        return checks + _guarded("tensorrt", lambda: check_tensorrt(graphs, engine_dir, precision, iterations))
    with tempfile.TemporaryDirectory(prefix="busref-doctor-") as tmp:
        return checks + _guarded("tensorrt", lambda: check_tensorrt(graphs, Path(tmp), precision, iterations))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, default=weights_dir(),
                        help=f"folder with the graphs (default: the shipped weights, or ${WEIGHTS_ENV})")
    parser.add_argument("--engine-dir", type=Path, help="keep the built engines here (default: a temporary folder)")
    parser.add_argument("--precision", choices=("fp16", "fp32"), default="fp16", help="engine precision (default fp16)")
    parser.add_argument("--iterations", type=int, default=200, help="timed runs per engine (default 200)")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")


def run(args: argparse.Namespace) -> int:
    checks = diagnose(args.weights, args.engine_dir, args.precision, args.iterations)
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{c.name:<{width}}  {c.status:<7}  {c.detail}")
    failed = [c.name for c in checks if c.status == "FAILED"]
    print(f"\n{'FAILED: ' + ', '.join(failed) if failed else 'no failures'}")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(c) for c in checks], indent=2, default=str))
    sys.stdout.flush()
    return 1 if failed else 0
