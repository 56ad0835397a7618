"""Inference backends: one interface (:class:`InferenceBackend`) over ONNX Runtime and TensorRT.

Use :func:`busref.runtime.backends.select.open_backend`; it imports TensorRT only when an engine is
configured, so the CPU install never needs it.
"""

from __future__ import annotations

from busref.runtime.backends.base import BackendUnavailable, InferenceBackend, ModelMissing, RunCancelled, check_io

__all__ = ["BackendUnavailable", "InferenceBackend", "ModelMissing", "RunCancelled", "check_io"]
