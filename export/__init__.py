"""The bridge from training to the rig: checkpoint -> verified ONNX graphs -> TensorRT engines.

* :mod:`busref.export.onnx_export` (needs torch): a checkpoint to ``register.onnx``, ``fuse.onnx`` and
  ``frame.onnx`` (warp + fusion in one call, for GPU backends), verified against PyTorch with
  ONNX Runtime before they are written.
* :mod:`busref.export.onnx_check`: the opset pin and the checks every consumer runs on a graph
  (contract, metadata, tampering); no torch.
* :mod:`busref.export.build_engine`: ONNX -> self-describing TensorRT engine (:mod:`busref.runtime.engine_header`);
  no torch, TensorRT imported only when building.
* :mod:`busref.export.doctor`: ``busref doctor``, the environment report and GPU checks.
"""

from __future__ import annotations
