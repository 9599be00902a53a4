"""Generated standard architectures (ResNet, VGG, Inception) as ONNX, with random or exactly low-rank weights.

`low_rank=f` gives every spatial conv a weight of rank round(f * C/g) along its input channels, so the `exact`
policy can rewrite it losslessly; `low_rank=None` gives full-rank random weights (nothing is lossless).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from onebyone.models.builder import NetBuilder


def resnet(size: int = 32, width: int = 16, blocks: tuple[int, ...] = (1, 1, 1), classes: int = 10, seed: int = 0,
           low_rank: float | None = None, weights_as: str = "initializer", opset: int = 17) -> onnx.ModelProto:
    """A ResNet of basic blocks (two 3x3 convs, identity or strided 1x1 projection shortcut)."""
    b = NetBuilder(3, size, seed, low_rank, weights_as)
    x = b.conv("input", 3, width, k=3)

    def basic(y, c_in, mid, out_c, stride):  # two 3x3 convs
        return b.conv(b.conv(y, c_in, out_c, k=3, stride=stride), out_c, out_c, k=3, relu=False)

    x, c = _residual_stages(b, x, width, blocks, width, 1, basic)
    return b.model(b.head(x, c, classes), "resnet", opset)


def _residual_stages(b: NetBuilder, x: str, c: int, blocks: tuple[int, ...], width: int, expansion: int,
                     branch: Callable) -> tuple[str, int]:
    """Stages of residual blocks after `x` (`c` channels): stage s has blocks[s] blocks whose branch
    (`branch(x, c_in, mid, out_c, stride)`, mid = width * 2**s, out_c = mid * expansion) is added to the identity
    or, when the shape changes, to a strided 1x1 projection, then ReLU; the first block of every later stage strides
    by 2. Returns the last output and its channels."""
    for stage, n in enumerate(blocks):
        mid = width * 2**stage
        out_c = mid * expansion
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            y = branch(x, c, mid, out_c, stride)
            shortcut = x if stride == 1 and c == out_c else b.conv(x, c, out_c, k=1, stride=stride, relu=False)
            x = b.op("Relu", [b.op("Add", [y, shortcut])])
            c = out_c
    return x, c


def resnet_bottleneck(size: int = 224, width: int = 64, blocks: tuple[int, ...] = (3, 4, 6, 3), classes: int = 1000,
                      seed: int = 0, low_rank: float | None = None, weights_as: str = "initializer",
                      opset: int = 17) -> onnx.ModelProto:
    """A ResNet of bottleneck blocks (1x1, 3x3, 1x1 with 4x expansion; strided 3x3 and 1x1 projection shortcut in
    the first block of each later stage) behind a 7x7/2 conv and a 3x3/2 max pool: the defaults are ResNet-50's shape
    (53 convs at 224x224); `blocks=(6, 8, 12, 6)` doubles its depth."""
    b = NetBuilder(3, size, seed, low_rank, weights_as)
    x = b.conv("input", 3, width, k=7, stride=2)
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])

    def bottleneck(y, c_in, mid, out_c, stride):  # 1x1 down, strided 3x3, 1x1 up
        y = b.conv(b.conv(y, c_in, mid, k=1), mid, mid, k=3, stride=stride)
        return b.conv(y, mid, out_c, k=1, relu=False)

    x, c = _residual_stages(b, x, width, blocks, width, 4, bottleneck)
    return b.model(b.head(x, c, classes), "resnet_bottleneck", opset)


def vgg(size: int = 32, widths: tuple[int, ...] = (16, 32, 64), convs_per_stage: int = 2, classes: int = 10,
        seed: int = 0, low_rank: float | None = None, weights_as: str = "initializer", opset: int = 17) -> onnx.ModelProto:
    """A VGG: stages of 3x3 conv + ReLU, each followed by 2x2 max pooling."""
    b = NetBuilder(3, size, seed, low_rank, weights_as)
    x, c = "input", 3
    for w in widths:
        for _ in range(convs_per_stage):
            x = b.conv(x, c, w, k=3)
            c = w
        x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    return b.model(b.head(x, c, classes), "vgg", opset)


def inception(size: int = 32, width: int = 16, modules: int = 2, classes: int = 10, seed: int = 0,
              low_rank: float | None = None, weights_as: str = "initializer", opset: int = 17) -> onnx.ModelProto:
    """A GoogLeNet-style net: modules of parallel 1x1, 3x3, 5x5 and pool-projection branches, concatenated."""
    b = NetBuilder(3, size, seed, low_rank, weights_as)
    x = b.conv("input", 3, width * 2, k=3, stride=2)
    c = width * 2
    for _ in range(modules):
        b1 = b.conv(x, c, width, k=1)
        b3 = b.conv(x, c, width, k=3)
        b5 = b.conv(x, c, width // 2, k=5)
        pool = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
        bp = b.conv(pool, c, width // 2, k=1)
        x = b.op("Concat", [b1, b3, b5, bp], axis=1)
        c = width * 3
    return b.model(b.head(x, c, classes), "inception", opset)


def detector(size: int = 32, width: int = 16, classes: int = 8, box_scale: float = 320.0, seed: int = 0,
             low_rank: float | None = None, weights_as: str = "initializer", opset: int = 17) -> onnx.ModelProto:
    """A YOLOv8-style single-scale detector whose one output `[N, 4 + classes, anchors]` concatenates box coordinates
    in pixels (0..box_scale) with class scores in [0, 1] (sigmoid, mostly small): quantities of very different scale
    in one tensor. A trunk (3x3, strided 3x3), then a box head and a score head (3x3 + 1x1 each)."""
    b = NetBuilder(3, size, seed, low_rank, weights_as)
    x = b.conv("input", 3, width, k=3)
    x = b.conv(x, width, width, k=3, stride=2)
    flat = lambda t, c: b.op("Reshape", [t, b.const(b._name("shape"), np.array([0, c, -1], np.int64))])  # noqa: E731
    boxes = b.conv(b.conv(x, width, width, k=3), width, 4, k=1, relu=False)
    boxes = b.op("Mul", [b.op("Sigmoid", [boxes]), b.const("box_scale", np.array(box_scale, np.float32))])
    scores = b.conv(b.conv(x, width, width, k=3), width, classes, k=1, relu=False)
    scores = b.op("Sigmoid", [b.op("Sub", [scores, b.const("score_offset", np.array(3.0, np.float32))])])
    out = b.op("Concat", [flat(boxes, 4), flat(scores, classes)], axis=1)
    return b.model(out, "detector", opset)


GENERATORS: dict[str, Callable[..., onnx.ModelProto]] = {"resnet": resnet, "vgg": vgg, "inception": inception,
                                                         "detector": detector, "resnet_bottleneck": resnet_bottleneck}
