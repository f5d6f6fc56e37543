"""ONNX export of a trained recognizer, and an onnxruntime model that predict.py can call.

The exported file carries everything needed to use it without the checkpoint: the
training configuration (charset, maximum length, input size, colour mode) as JSON in
the model's metadata, plus plain-text notes on preprocessing and on decoding the output.
onnxruntime is optional: only this module imports it, and only when a file is loaded.
"""

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from atomic import atomic_write
from checkpoints import config_from_checkpoint
from codec import LabelCodec
from config import Config
from device import keep_freed_memory

PREPROCESS = (
    "RGB (channels 3) or grayscale (channels 1); resize keeping the aspect ratio to fit img_height x img_width "
    "(bilinear), centre on a white canvas of exactly that size, then x / 127.5 - 1; layout (batch, channels, height, width) float32"
)
DECODE = (
    "output logits (batch, max_len, 1 + len(charset)); per position take the argmax: class 0 is end/pad, "
    "class i is charset[i - 1]; the text is the characters before the first class 0 (never before min_len); "
    "ignore_case true: the model reads lower case and answers are compared lower-cased; "
    "softmax(logits / temperature) gives confidences (temperature: this file's metadata)"
)


class OnnxModel:
    """An onnxruntime session with the calling convention of CNNModel in eval mode:
    images (B, C, H, W) float tensor -> logits (B, max_len, num_classes) tensor."""

    device = torch.device("cpu")
    feature_stats = None  # the exported graph gives logits only: no familiarity check

    def __init__(self, path: str | os.PathLike, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        # Spinning worker threads compete with the preprocessing and torch's own threads
        # between calls: one image end to end took 3.4 ms spinning, 1.9 ms not (2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.metadata = self.session.get_modelmeta().custom_metadata_map
        self.temperature = float(self.metadata.get("temperature", 1.0))

    def eval(self) -> "OnnxModel":
        return self

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(["logits"], {"images": images.float().contiguous().numpy()})
        return torch.from_numpy(logits)


def export_onnx(model: torch.nn.Module, ckpt: dict, output: str | os.PathLike, opset: int = 18) -> Path:
    """Write ``model`` (a CNNModel from ``ckpt``) to ONNX with a dynamic batch axis.

    Input ``images`` (batch, C, H, W) float32; output ``logits`` (batch, max_len, classes).
    Written to a temporary name and renamed, like checkpoints.
    """
    config = config_from_checkpoint(ckpt)
    model = model.cpu().eval().to(memory_format=torch.contiguous_format)
    m = config.model
    example = torch.zeros(2, m.channels, m.img_height, m.img_width)
    program = torch.onnx.export(
        model,
        (example,),
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},),
        opset_version=opset,
        dynamo=True,
        verbose=False,
    )
    info = {k: ckpt.get(k) for k in ("saved_at", "epoch", "best_metric")} | {"checkpoint": str(ckpt.get("path", ""))}
    program.model.metadata_props.update(
        {
            "config": json.dumps(asdict(config)),
            "charset": m.charset,
            "ignore_case": str(m.ignore_case).lower(),
            "min_len": str(m.min_len),
            "max_len": str(m.max_len),
            "img_height": str(m.img_height),
            "img_width": str(m.img_width),
            "channels": str(m.channels),
            "temperature": str(ckpt.get("temperature", 1.0)),
            "preprocess": PREPROCESS,
            "decode": DECODE,
            "source": json.dumps(info),
        }
    )
    with atomic_write(output) as tmp:
        program.save(str(tmp))
        _pool_for_onnxruntime(str(tmp))
    return Path(output)


def _pool_for_onnxruntime(path: str) -> None:
    """Rewrite, in place, the exporter's spatial means (ReduceMean) as pooling operators,
    which onnxruntime runs in its blocked (NCHWc) convolution layout: the mean over height
    and width in each squeeze-and-excitation block -> GlobalAveragePool, the mean over the
    height before the columns -> AveragePool over the whole height + Squeeze. As
    ReduceMeans they made every block convert the layout back and forth; with the rewrite
    batch throughput went from 1.16-1.51x to 1.67-1.69x PyTorch eager's here
    (bench/RESULTS.md). The outputs are the same up to float rounding."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper, shape_inference

    model = shape_inference.infer_shapes(onnx.load(path))
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    shapes = {v.name: [d.dim_value or None for d in v.type.tensor_type.shape.dim] for v in model.graph.value_info}
    nodes = []
    for node in model.graph.node:
        shape = shapes.get(node.input[0]) if node.op_type == "ReduceMean" else None
        axes = constants.get(node.input[1]) if shape and len(shape) == 4 and len(node.input) == 2 else None
        keepdims = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
        axes = sorted(int(a) % 4 for a in axes.tolist()) if axes is not None else None
        if axes == [2, 3] and keepdims:
            nodes.append(helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output), name=node.name))
        elif axes == [2] and not keepdims and shape[2]:
            pooled, axis = node.output[0] + "_pooled", node.name + "_height_axis"
            model.graph.initializer.append(numpy_helper.from_array(np.array([2], dtype=np.int64), axis))
            nodes.append(helper.make_node("AveragePool", [node.input[0]], [pooled], name=node.name, kernel_shape=[shape[2], 1]))
            nodes.append(helper.make_node("Squeeze", [pooled, axis], list(node.output), name=node.name + "_squeeze"))
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for node in nodes for name in node.input}
    unused = [i for i in model.graph.initializer if i.name not in used]  # the replaced nodes' axes
    for initializer in unused:
        model.graph.initializer.remove(initializer)
    onnx.checker.check_model(model)
    onnx.save(model, path)


def load_onnx(path: str | os.PathLike, threads: int = 0) -> tuple[OnnxModel, LabelCodec, Config, dict]:
    """The ONNX counterpart of utils.load_model: (model, codec, config, info dict with 'path')."""
    keep_freed_memory()  # for the preprocessing's tensors; onnxruntime has its own arena
    model = OnnxModel(path, threads)
    meta = model.metadata
    if "config" not in meta:
        raise ValueError(f"{path}: no 'config' metadata; export it with export_onnx.py")
    config = config_from_checkpoint({"config": json.loads(meta["config"])})
    info = json.loads(meta.get("source", "{}")) | {"path": str(path)}
    m = config.model
    return model, LabelCodec.for_model(m), config, info


def quantize_onnx(source: str | os.PathLike, output: str | os.PathLike) -> Path:
    """int8 dynamic quantisation of an exported file (weights int8, activations quantised
    on the fly), keeping its metadata. Check the accuracy it costs with bench_inference.py."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic_write(output) as tmp:
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8)
        model = onnx.load(str(tmp))
        del model.metadata_props[:]
        model.metadata_props.extend(onnx.load(str(source), load_external_data=False).metadata_props)
        onnx.save(model, str(tmp))
    return Path(output)
