"""Mixed precision for strongly typed TensorRT networks: convolutions in FP16, the rest FP32. No torch.

TensorRT 11 builds strongly typed networks only: each layer runs in the type the ONNX graph
gives it, and the FP16 builder flag is gone. For ``--precision fp16`` there, the builder feeds
TensorRT a copy of the graph in which every ``Conv`` computes in float16 (inputs cast down,
weights stored as float16, output cast back up) and everything else, in particular GridSample
and all grid arithmetic, stays float32. The casts are explicit so the warp's precision is a
property of the graph rather than of a builder heuristic. Graph I/O stays float32.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: Ops computed in float16; their neighbours are untouched.
FP16_OPS = frozenset({"Conv"})

#: Node-name scopes kept in float32 whatever their op: the register graph's Lucas-Kanade stage
#: (busref.models.networks.lucas_kanade) blurs squared descriptor gradients of ~1e-4 and divides
#: by determinants of their products, below float16's normal range (6.1e-5). TensorRT names its
#: layers after the ONNX nodes, so :func:`busref.export.build_engine.warp_layers` uses them too.
FP32_SCOPES = ("/lucas_kanade/",)


def in_fp32_scope(name: str) -> bool:
    """Whether a node or layer ``name`` lies in one of :data:`FP32_SCOPES`."""
    return any(scope in name for scope in FP32_SCOPES)


def convolutions_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with each FP16_OPS node outside :data:`FP32_SCOPES` in float16 between
    explicit Casts."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    initializers = {t.name: t for t in graph.initializer}
    half_weights: dict[str, str] = {}  # float32 initializer -> its float16 copy
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        if node.op_type not in FP16_OPS or in_fp32_scope(node.name):
            nodes.append(node)
            continue
        inputs = []
        for name in node.input:
            if not name:
                inputs.append(name)
            elif name in initializers and initializers[name].data_type == TensorProto.FLOAT:
                if name not in half_weights:
                    half = numpy_helper.from_array(numpy_helper.to_array(initializers[name]).astype(np.float16),
                                                   f"{name}__fp16")
                    graph.initializer.append(half)
                    half_weights[name] = half.name
                inputs.append(half_weights[name])
            else:
                cast = f"{name}__fp16_{index}"
                nodes.append(helper.make_node("Cast", [name], [cast], to=TensorProto.FLOAT16,
                                              name=f"{node.name}/cast_in_{len(inputs)}"))
                inputs.append(cast)
        half_out = [f"{o}__fp16" for o in node.output]
        converted = onnx.NodeProto()
        converted.CopyFrom(node)
        del converted.input[:], converted.output[:]
        converted.input.extend(inputs)
        converted.output.extend(half_out)
        nodes.append(converted)
        for i, (half, full) in enumerate(zip(half_out, node.output, strict=True)):
            nodes.append(helper.make_node("Cast", [half], [full], to=TensorProto.FLOAT,
                                          name=f"{node.name}/cast_out_{i}"))
    del graph.node[:]
    graph.node.extend(nodes)
    # Converted float32 weights no longer feed anything.
    used = {name for n in graph.node for name in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]  # stale intermediate types; TensorRT and checkers re-infer them
    onnx.checker.check_model(out)
    return out
