"""TensorRT backend: runs a busref engine file (:mod:`busref.runtime.engine_header`) on a CUDA GPU.

Loading checks, in order, and refuses with :class:`EngineMismatch` (a
:class:`~busref.runtime.backends.base.BackendUnavailable`, so ``auto`` falls back to ONNX Runtime):
the file's header and plan (truncated/corrupt/foreign files), the graph kind and I/O contract,
the ONNX file the engine was built from when the caller names it (a stale engine), then the
header's TensorRT version and GPU against the running ones, naming both.

Inference uses TensorRT's named-tensor API (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``) on a CUDA stream with device buffers allocated once, at the profile's
largest shapes, through cuda-python's runtime bindings; no PyTorch. A held input
(:meth:`TensorRTBackend.hold`, the ``frame`` graph's grid) is uploaded into its buffer once and
left there: ``run`` uploads only the others. ``tensorrt`` and
``cuda-python`` are imported when a backend is created, never at module import.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from busref.conventions import GRAPH_IO, file_sha256
from busref.runtime.artifact import GraphKind, check_compatible
from busref.runtime.backends.base import BackendUnavailable, RunCancelled, check_feed, check_io
from busref.runtime.engine_header import (
    EngineHeader,
    Platform,
    header_platform,
    mismatch_message,
    platform_mismatches,
    read_engine,
)

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'busref[gpu]'"


class EngineMismatch(BackendUnavailable):
    """The engine cannot run here: other TensorRT/GPU, stale against its ONNX, or unreadable."""


class CudaError(BackendUnavailable):
    """A CUDA runtime call failed (no GPU, driver too old, out of memory...)."""


def load_tensorrt() -> ModuleType:
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailable(f"TensorRT is not installed ({INSTALL_HINT}; its wheels come from "
                                 "NVIDIA's package index)") from None
    return tensorrt


def load_cudart() -> ModuleType:
    """cuda-python's runtime API module (``cuda.bindings.runtime``; ``cuda.cudart`` before 12.6)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError:
            raise BackendUnavailable(f"cuda-python is not installed ({INSTALL_HINT})") from None
    return runtime


def cuda_check(cudart: ModuleType, result: Any, what: str) -> Any:
    """Unpack a cuda-python result tuple ``(error, *values)``; :class:`CudaError` on failure."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if error != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(error)
        raise CudaError(f"CUDA {what} failed: {text.decode() if isinstance(text, bytes) else text}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def gpu_platform(tensorrt_version: str, device: int = 0, cudart: ModuleType | None = None) -> Platform:
    """The running platform for :func:`busref.runtime.engine_header.platform_mismatches`.

    Raises :class:`CudaError` with one sentence when no CUDA GPU is visible.
    """
    cudart = cudart or load_cudart()
    error, count = cudart.cudaGetDeviceCount()
    if error != cudart.cudaError_t.cudaSuccess or count == 0:
        raise CudaError("no CUDA GPU is visible (no device, no driver, or CUDA_VISIBLE_DEVICES hides it)")
    if device >= count:
        raise CudaError(f"GPU {device} was asked for, CUDA sees {count} GPU(s)")
    props = cuda_check(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    version = cuda_check(cudart, cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
    return Platform(tensorrt_version, f"{version // 1000}.{version % 1000 // 10}", name.rstrip("\x00").strip(),
                    f"{props.major}.{props.minor}")


class CudaStream:
    """A CUDA stream owned by this object."""

    def __init__(self, cudart: ModuleType) -> None:
        self._cudart = cudart
        self.stream = cuda_check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")

    @property
    def handle(self) -> int:
        """The stream as the integer TensorRT's ``execute_async_v3`` takes."""
        try:
            return int(self.stream)
        except TypeError:  # cuda-python releases without __int__ on handle types
            return int(self.stream.getPtr())

    def synchronize(self) -> None:
        cuda_check(self._cudart, self._cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.stream is not None:
            self._cudart.cudaStreamDestroy(self.stream)
            self.stream = None


class DeviceBuffer:
    """``nbytes`` of device memory, with async copies from and to host arrays on a stream."""

    def __init__(self, cudart: ModuleType, nbytes: int) -> None:
        self._cudart = cudart
        self.nbytes = nbytes
        self.ptr: int | None = int(cuda_check(cudart, cudart.cudaMalloc(max(nbytes, 1)), f"cudaMalloc({nbytes})"))

    def _fits(self, array: np.ndarray) -> None:
        if array.nbytes > self.nbytes:
            raise ValueError(f"{array.nbytes} bytes do not fit a {self.nbytes}-byte device buffer")

    def upload(self, array: np.ndarray, stream: CudaStream) -> None:
        """Copy a C-contiguous ``array`` to the device (it must stay alive until the stream syncs)."""
        self._fits(array)
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        cuda_check(self._cudart, self._cudart.cudaMemcpyAsync(self.ptr, array.ctypes.data, array.nbytes, kind,
                                                              stream.stream), "cudaMemcpyAsync (to GPU)")

    def download(self, array: np.ndarray, stream: CudaStream) -> None:
        """Copy into a C-contiguous ``array``; valid after ``stream.synchronize()``."""
        self._fits(array)
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_check(self._cudart, self._cudart.cudaMemcpyAsync(array.ctypes.data, self.ptr, array.nbytes, kind,
                                                              stream.stream), "cudaMemcpyAsync (from GPU)")

    def close(self) -> None:
        if self.ptr is not None:
            self._cudart.cudaFree(self.ptr)
            self.ptr = None


def check_header_against(header: EngineHeader, *, graph: GraphKind, source: str,
                         onnx_path: str | Path | None = None) -> None:
    """The checks that need no GPU: graph kind, I/O contract, and staleness against ``onnx_path``."""
    check_compatible(header.metadata, graph=graph, source=source)
    check_io(graph, [t.name for t in header.inputs], [t.name for t in header.outputs], source=source)
    if onnx_path is not None and Path(onnx_path).is_file():
        if file_sha256(Path(onnx_path)) != header.onnx_sha256:
            raise EngineMismatch(f"{source}: stale: it was built from another version of {onnx_path} "
                                 "(sha256 differs); rebuild it with 'busref export engine'")


class TensorRTBackend:
    """An :class:`~busref.runtime.backends.base.InferenceBackend` over a busref TensorRT engine file."""

    name = "tensorrt"
    gpu_resident = True

    def __init__(self, engine_path: str | Path, *, graph: GraphKind, onnx_path: str | Path | None = None,
                 device: int = 0) -> None:
        self.path = Path(engine_path)
        self.graph = graph
        self.device = device
        self._buffers: dict[str, DeviceBuffer] = {}
        self._held: dict[str, tuple[int, ...]] = {}  # held input -> its shape (its data is on the GPU)
        self._cancelled = False
        self._stream: CudaStream | None = None
        source = str(self.path)
        self.header, plan = read_engine(self.path)
        self.metadata = self.header.metadata
        check_header_against(self.header, graph=graph, source=source, onnx_path=onnx_path)
        trt = load_tensorrt()
        self._cudart = load_cudart()
        cuda_check(self._cudart, self._cudart.cudaSetDevice(device), f"cudaSetDevice({device})")
        self.platform = gpu_platform(trt.__version__, device, self._cudart)
        built = header_platform(self.header)
        errors, warnings = platform_mismatches(built, self.platform)
        if errors:
            raise EngineMismatch(mismatch_message(source, built, self.platform, errors))
        for warning in warnings:
            log.warning("%s: %s", source, warning)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise EngineMismatch(f"{source}: TensorRT {trt.__version__} could not deserialize the plan "
                                 "(its log above says why); rebuild it with 'busref export engine'")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = list(GRAPH_IO[graph][1])
        check_io(graph, self._inputs, [n for n in names if n not in self._inputs], source=source)
        self._profile = {t.name: (tuple(t.min or t.shape), tuple(t.max or t.shape)) for t in self.header.inputs}
        self._stream = CudaStream(self._cudart)
        self._allocate()
        log.info("%s graph on TensorRT %s (%s, %s): %s", graph, trt.__version__, self.header.precision,
                 self.metadata.model_id, self.platform.describe())

    def _allocate(self) -> None:
        """Device buffers for the largest shapes of the profile: no allocation per frame."""
        for name in self._inputs:
            self._context.set_input_shape(name, self._profile[name][1])
        for name in [*self._inputs, *self._outputs]:
            count = int(np.prod(tuple(self._context.get_tensor_shape(name))))
            self._buffers[name] = DeviceBuffer(self._cudart, count * np.dtype(np.float32).itemsize)
            self._context.set_tensor_address(name, self._buffers[name].ptr)

    def _check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        low, high = self._profile[name]
        if len(shape) != len(low) or any(s < lo or s > hi for s, lo, hi in zip(shape, low, high, strict=True)):
            raise ValueError(f"{self.path}: input {name} of shape {shape} is outside the engine's profile "
                             f"{list(low)}..{list(high)}; rebuild it with a wider profile")

    def _stage(self, name: str, array: np.ndarray) -> np.ndarray:
        """Set ``name``'s shape and queue its upload; returns the array the copy reads (keep it
        alive until the stream syncs)."""
        array = np.ascontiguousarray(array, dtype=np.float32)
        self._check_shape(name, array.shape)
        if not self._context.set_input_shape(name, array.shape):
            raise ValueError(f"{self.path}: TensorRT refused shape {array.shape} for input {name}")
        self._buffers[name].upload(array, self._stream)
        return array

    def hold(self, name: str, array: np.ndarray) -> None:
        if name not in self._inputs:
            raise ValueError(f"{self.path}: the {self.graph} graph has no input {name!r} (inputs {self._inputs})")
        cuda_check(self._cudart, self._cudart.cudaSetDevice(self.device), "cudaSetDevice")
        staged = self._stage(name, array)
        self._stream.synchronize()
        self._held[name] = staged.shape

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._cancelled:
            raise RunCancelled(f"{self.path}: cancelled")
        cudart, stream = self._cudart, self._stream
        cuda_check(cudart, cudart.cudaSetDevice(self.device), "cudaSetDevice")  # the caller's thread may differ
        check_feed(str(self.path), self._inputs, inputs, self._held)
        staged = [self._stage(name, inputs[name]) for name in self._inputs if name not in self._held]
        results = {}
        for name in self._outputs:
            results[name] = np.empty(tuple(self._context.get_tensor_shape(name)), dtype=np.float32)
        if not self._context.execute_async_v3(stream.handle):
            raise RuntimeError(f"{self.path}: TensorRT execution failed (its log above says why)")
        for name, array in results.items():
            self._buffers[name].download(array, stream)
        stream.synchronize()
        del staged  # the queued uploads read these host arrays until the sync above
        return results

    def cancel(self) -> None:
        # An enqueued engine cannot be stopped; a call in progress ends within its few milliseconds.
        self._cancelled = True

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "graph": self.graph,
            "model_id": self.metadata.model_id,
            "path": str(self.path),
            "device": f"cuda:{self.device}",
            "gpu_resident": self.gpu_resident,
            "gpu": self.platform.gpu_name,
            "compute_capability": self.platform.compute_capability,
            "version": self.platform.tensorrt_version,
            "precision": self.header.precision,
            "profile": {n: [list(lo), list(hi)] for n, (lo, hi) in self._profile.items()},
        }

    def close(self) -> None:
        """Free the device buffers and the stream (also done when the backend is collected)."""
        for buffer in self._buffers.values():
            buffer.close()
        self._buffers.clear()
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def __del__(self) -> None:
        if getattr(self, "_buffers", None) is not None:
            self.close()
