"""The zoo's residual blocks against forward passes written out by hand on tiny inputs (not only shapes).

Convolution, batch norm (eval mode: running statistics) and ReLU are written here with numpy loops in float64;
each block's parameters and running statistics are set to seeded random values so that no part is an identity
by accident. A block that drops its shortcut, applies it to the wrong tensor, or reorders its layers fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kdlab.models.mobilenetv2 import InvertedResidual
from kdlab.models.resnet import BasicBlock
from kdlab.models.wrn import WideBlock

pytestmark = pytest.mark.usefixtures("one_thread")


def conv2d(x: np.ndarray, w: np.ndarray, stride: int = 1, padding: int = 0, groups: int = 1) -> np.ndarray:
    """x (N, C, H, W), w (O, C / groups, k, k), zero padding, no bias: the sum over the window, by loops."""
    n, c, h, width = x.shape
    o, c_per_group, k, _ = w.shape
    xp = np.zeros((n, c, h + 2 * padding, width + 2 * padding))
    xp[:, :, padding : padding + h, padding : padding + width] = x
    oh, ow = (h + 2 * padding - k) // stride + 1, (width + 2 * padding - k) // stride + 1
    out = np.zeros((n, o, oh, ow))
    per_group_out = o // groups
    for b in range(n):
        for oc in range(o):
            first = (oc // per_group_out) * c_per_group  # the input channels of this output's group
            for i in range(oh):
                for j in range(ow):
                    y0, x0 = i * stride, j * stride
                    window = xp[b, first : first + c_per_group, y0 : y0 + k, x0 : x0 + k]
                    out[b, oc, i, j] = float((window * w[oc]).sum())
    return out


def batch_norm(x: np.ndarray, bn: nn.BatchNorm2d) -> np.ndarray:
    """Eval mode: (x - running mean) / sqrt(running var + eps) · weight + bias, per channel."""
    view = (1, -1, 1, 1)
    mean, var = bn.running_mean.numpy().reshape(view), bn.running_var.numpy().reshape(view)
    gamma, beta = bn.weight.detach().numpy().reshape(view), bn.bias.detach().numpy().reshape(view)
    return (x - mean) / np.sqrt(var + bn.eps) * gamma + beta


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def weights(conv: nn.Conv2d) -> np.ndarray:
    assert conv.bias is None  # the zoo's convolutions have no bias (batch norm follows)
    return conv.weight.detach().numpy()


def randomised(block: nn.Module, seed: int) -> nn.Module:
    """float64, eval mode, every parameter and running statistic drawn at random: conv weights in [-1, 1], BN
    scales in [0.5, 1.5], shifts and running means in [-0.3, 0.3], running variances in [0.5, 2]."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(n: int | torch.Size, low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=gen, dtype=torch.float64) * (high - low) + low

    block = block.double().eval()
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(uniform(m.weight.shape, -1.0, 1.0))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(uniform(m.num_features, 0.5, 1.5))
                m.bias.copy_(uniform(m.num_features, -0.3, 0.3))
                m.running_mean.copy_(uniform(m.num_features, -0.3, 0.3))
                m.running_var.copy_(uniform(m.num_features, 0.5, 2.0))
    return block


def _input(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _check(block: nn.Module, x: torch.Tensor, expected: np.ndarray, without_shortcut: np.ndarray) -> None:
    with torch.no_grad():
        got = block(x).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    assert np.abs(expected - without_shortcut).max() > 0.1  # the shortcut's contribution is visible here


@pytest.mark.parametrize(("in_ch", "out_ch", "stride"), [(3, 3, 1), (2, 4, 2)], ids=["identity", "projection"])
def test_resnet_basic_block_by_hand(in_ch, out_ch, stride):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); shortcut = x, or bn(conv1x1 stride s (x))."""
    block = randomised(BasicBlock(in_ch, out_ch, stride), seed=in_ch)
    x = _input(0, (2, in_ch, 5, 5))
    xn = x.numpy()
    hidden = relu(batch_norm(conv2d(xn, weights(block.conv1), stride, 1), block.bn1))
    main = batch_norm(conv2d(hidden, weights(block.conv2), 1, 1), block.bn2)
    if stride == 1 and in_ch == out_ch:
        assert isinstance(block.shortcut, nn.Identity)
        shortcut = xn
    else:
        conv, bn = block.shortcut[0], block.shortcut[1]
        shortcut = batch_norm(conv2d(xn, weights(conv), stride, 0), bn)
    _check(block, x, relu(main + shortcut), relu(main))


@pytest.mark.parametrize(("in_ch", "out_ch", "stride"), [(3, 3, 1), (2, 4, 2)], ids=["identity", "projection"])
def test_wide_resnet_block_by_hand(in_ch, out_ch, stride):
    """Pre-activation: a = relu(bn1(x)); conv2(relu(bn2(conv1(a)))) + (x, or conv1x1(a) when the shape changes)."""
    block = randomised(WideBlock(in_ch, out_ch, stride, dropout=0.0), seed=10 + in_ch)
    x = _input(1, (2, in_ch, 5, 5))
    xn = x.numpy()
    activated = relu(batch_norm(xn, block.bn1))
    hidden = relu(batch_norm(conv2d(activated, weights(block.conv1), stride, 1), block.bn2))
    main = conv2d(hidden, weights(block.conv2), 1, 1)
    shortcut = xn if block.shortcut is None else conv2d(activated, weights(block.shortcut), stride, 0)
    assert (block.shortcut is None) == (stride == 1 and in_ch == out_ch)
    _check(block, x, main + shortcut, main)


@pytest.mark.parametrize(("in_ch", "out_ch", "stride"), [(3, 3, 1), (2, 4, 1), (3, 3, 2)])
def test_mobilenetv2_inverted_residual_by_hand(in_ch, out_ch, stride):
    """1x1 expand (×2) - BN - ReLU - 3x3 depthwise (stride) - BN - ReLU - 1x1 project - BN, plus x when the shape
    is kept (stride 1, same channels) and nothing otherwise."""
    block = randomised(InvertedResidual(in_ch, out_ch, stride, expand_ratio=2), seed=20 + in_ch + stride)
    x = _input(2, (2, in_ch, 5, 5))
    xn = x.numpy()
    layers = list(block.conv)
    hidden = relu(batch_norm(conv2d(xn, weights(layers[0])), layers[1]))
    hidden = relu(batch_norm(conv2d(hidden, weights(layers[3]), stride, 1, groups=2 * in_ch), layers[4]))
    projected = batch_norm(conv2d(hidden, weights(layers[6])), layers[7])
    if stride == 1 and in_ch == out_ch:
        _check(block, x, xn + projected, projected)
    else:
        with torch.no_grad():
            np.testing.assert_allclose(block(x).numpy(), projected, rtol=1e-10, atol=1e-12)
