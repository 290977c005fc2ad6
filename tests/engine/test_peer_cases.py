"""Peer cases: the model structures Torch-Pruning's public tests exercise, and torchvision's classification models.

Every case is a small self-contained model, written here after a Torch-Pruning test (its ``tests/`` folder, named
in ``source``), an op kind Torch-Pruning's dependency graph handles (``torch_pruning/ops.py``, ``OPTYPE``), or a
torchvision model (random weights, a small input). Each is pruned to 0.5 of its MACs with ``lcp.prune`` and must
end in one of two ways, declared in the case table:

* it prunes: verified against the masked original (lcp refuses a model that is not), the same output shapes, at
  most 0.5 x the MACs (re-counted with ``lcp.count_macs``), fewer parameters, forward and backward in train mode,
  the original untouched (``tests.helpers.prune_and_check`` for one tensor in and out, the same checks otherwise);
* it is refused: an ``LcpError`` of the declared class whose message names the op or module that stops it.

A refusal that changes, or a case that should prune and is refused, fails. The whole file takes well under a
minute on one thread (the ``one_thread`` fixture).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lcp
from lcp.errors import LcpError, UnreachableBudget
from tests.helpers import prune_and_check

torchvision = pytest.importorskip("torchvision")

pytestmark = pytest.mark.usefixtures("one_thread")

BUDGET = 0.5
Inputs = torch.Tensor | tuple[torch.Tensor, ...]


def randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


# ============================================================================ Torch-Pruning's tests/ (structures)


class ConcatSplit(nn.Module):
    """tests/test_concat_split.py: split a block's output, concat one piece with a parallel path, add the other."""

    def __init__(self, in_dim: int = 8):
        super().__init__()
        self.block1 = nn.Sequential(
            nn.Conv2d(in_dim, in_dim, 1),
            nn.BatchNorm2d(in_dim),
            nn.GELU(),
            nn.Conv2d(in_dim, 2 * in_dim, 1),
            nn.BatchNorm2d(2 * in_dim),
        )
        self.parallel_path = nn.Sequential(
            nn.Conv2d(in_dim, in_dim, 1),
            nn.BatchNorm2d(in_dim),
            nn.GELU(),
            nn.Conv2d(in_dim, in_dim, 1),
            nn.BatchNorm2d(in_dim),
        )
        self.block2 = nn.Sequential(nn.Conv2d(in_dim * 2, in_dim, 1), nn.BatchNorm2d(in_dim))

    def forward(self, x):
        x3 = self.parallel_path(x)
        x = self.block1(x)
        x1_ch = self.block2[0].in_channels - self.parallel_path[-1].num_features
        x2_ch = self.block1[-1].num_features - x1_ch
        x1, x2 = torch.split(x, (x1_ch, x2_ch), 1)
        x = torch.cat([x1, x3], dim=1)
        x = self.block2(x)
        return x + x2


class CascadedConcat(nn.Module):
    """tests/test_cascaded_concat.py: four parallel blocks concatenated by three nested ``torch.cat``."""

    def __init__(self, in_dim: int = 8):
        super().__init__()

        def block(cin: int, cout: int, deep: bool) -> nn.Sequential:
            if not deep:
                return nn.Sequential(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout))
            return nn.Sequential(
                nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout), nn.GELU(), nn.Conv2d(cout, cout, 1), nn.BatchNorm2d(cout)
            )

        self.block1 = block(in_dim, in_dim, True)
        self.block2 = block(in_dim, 2 * in_dim, True)
        self.block3 = block(in_dim, 3 * in_dim, False)
        self.block4 = block(in_dim, 6 * in_dim, False)
        self.output = nn.Conv2d(12 * in_dim, 10, 1)

    def forward(self, x):
        output12 = torch.cat([self.block1(x), self.block2(x)], dim=1)
        output123 = torch.cat([output12, self.block3(x)], dim=1)
        return self.output(torch.cat([output123, self.block4(x)], dim=1))


class NonFeatureDimCat(nn.Module):
    """tests/test_non_feature_dim_cat.py: concat along H (dim 2), a conv, then a split along H by the pieces'
    runtime heights."""

    def __init__(self, in_dim: int = 16):
        super().__init__()

        def block() -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(in_dim, in_dim, 1),
                nn.BatchNorm2d(in_dim),
                nn.GELU(),
                nn.Conv2d(in_dim, in_dim, 1),
                nn.BatchNorm2d(in_dim),
            )

        self.block1, self.parallel_path = block(), block()
        self.conv1 = nn.Conv2d(in_dim, in_dim, 1)
        self.conv2 = nn.Conv2d(in_dim, in_dim, 1)

    def forward(self, x):
        x1 = self.block1(x)
        x2 = self.parallel_path(x)
        x = torch.cat([x1, x2], dim=2)
        x = self.conv1(x)
        x1, x2 = torch.split(x, [x1.shape[2], x2.shape[2]], dim=2)
        return self.conv2(x1)


class ReshapeTransposed(nn.Module):
    """tests/test_reshape.py: Linear -> ``view`` into (C, 4, 4) -> two ConvTranspose2d -> flatten -> Linear."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(32, 16 * 4 * 4)
        self.conv1T1 = nn.ConvTranspose2d(16, 8, kernel_size=4, stride=2, padding=1)
        self.conv1T2 = nn.ConvTranspose2d(8, 4, kernel_size=4, stride=2, padding=1)
        self.final = nn.Linear(4 * 16 * 16, 10)

    def forward(self, x):
        x = F.relu(self.linear(x))
        x = x.view(-1, self.conv1T1.in_channels, 4, 4)
        x = F.relu(self.conv1T1(x))
        x = F.relu(self.conv1T2(x))
        return self.final(torch.flatten(x, 1))


class SplitShared(nn.Module):
    """tests/test_split.py: a three-way channel split; one block applied to two pieces (shared weights); the three
    results are the model's outputs (a tuple)."""

    def __init__(self, in_dim: int = 8):
        super().__init__()
        self.block1 = nn.Sequential(
            nn.Conv2d(in_dim, in_dim, 1),
            nn.BatchNorm2d(in_dim),
            nn.GELU(),
            nn.Conv2d(in_dim, in_dim * 4, 1),
            nn.BatchNorm2d(in_dim * 4),
        )
        self.block2_1 = nn.Sequential(nn.Conv2d(in_dim, in_dim, 1), nn.BatchNorm2d(in_dim))
        self.block2_2 = nn.Sequential(nn.Conv2d(2 * in_dim, in_dim, 1), nn.BatchNorm2d(in_dim))

    def forward(self, x):
        x = self.block1(x)
        c1, c2 = self.block2_1[0].in_channels, self.block2_2[0].in_channels
        x1, x2, x3 = torch.split(x, [c1, c1, c2], dim=1)
        return self.block2_1(x1), self.block2_1(x2), self.block2_2(x3)


class CustomizedLayer(nn.Module):
    """tests/test_customized_layer.py: an L2 norm over the features, a per-feature scale and bias read in forward,
    then an inner Linear."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.in_dim = in_dim
        self.scale = nn.Parameter(torch.rand(in_dim) + 0.5)
        self.bias = nn.Parameter(torch.randn(in_dim) * 0.1)
        self.fc = nn.Linear(in_dim, in_dim)

    def forward(self, x):
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt()
        x = torch.div(x, norm)
        return self.fc(x * self.scale + self.bias)


class CustomizedNet(nn.Module):
    """tests/test_customized_layer.py (and tests/test_unused_parameters.py with ``unused``): fc1 -> CustomizedLayer
    -> fc2, no rule registered for the custom layer."""

    def __init__(self, input_size: int = 32, num_classes: int = 10, hidden: int = 64, unused: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(input_size, hidden)
        self.customized_layer = CustomizedLayer(hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        if unused:
            self.unused = nn.Parameter(torch.randn(10))

    def forward(self, x):
        return self.fc2(self.customized_layer(F.relu(self.fc1(x))))


class MultiIO(nn.Module):
    """tests/test_multiple_inputs_and_outputs.py: two inputs, two Linears, a Linear over their concat; all three
    activations are returned."""

    def __init__(self, input_sizes=(32, 16), output_sizes=(16, 16), out: int = 64):
        super().__init__()
        self.fc1 = nn.Linear(input_sizes[0], output_sizes[0])
        self.fc2 = nn.Linear(input_sizes[1], output_sizes[1])
        self.fc3 = nn.Linear(sum(output_sizes), out)

    def forward(self, x1, x2):
        x1 = F.relu(self.fc1(x1))
        x2 = F.relu(self.fc2(x2))
        x3 = F.relu(self.fc3(torch.cat([x1, x2], dim=1)))
        return x1, x2, x3


class MultiInput(MultiIO):
    """tests/test_multiple_inputs_and_outputs.py with one output: two inputs, the concat's Linear is the head."""

    def __init__(self):
        super().__init__(out=10)
        self.fc4 = nn.Linear(10, 10)

    def forward(self, x1, x2):
        return self.fc4(super().forward(x1, x2)[2])


class FCResidual(nn.Module):
    """tests/test_fully_connected_layers.py: Linear layers with a residual add between two hidden widths."""

    def __init__(self, input_size: int = 32, num_classes: int = 10, hidden: int = 64):
        super().__init__()
        self.fc1 = nn.Linear(input_size, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        x = F.relu(self.fc1(x))
        skip = x
        x = F.relu(self.fc2(x))
        x = x + skip
        return self.fc3(x)


class LeNet(nn.Module):
    """tests/test_dependency_lenet.py: LeNet-5 (conv, max-pool, ``view`` to (N, C*H*W), three Linears)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.relu1, self.pool1 = nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.relu2, self.pool2 = nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2)
        self.fc1, self.relu3 = nn.Linear(256, 120), nn.ReLU()
        self.fc2, self.relu4 = nn.Linear(120, 84), nn.ReLU()
        self.fc3, self.relu5 = nn.Linear(84, 10), nn.ReLU()

    def forward(self, x):
        y = self.pool1(self.relu1(self.conv1(x)))
        y = self.pool2(self.relu2(self.conv2(y)))
        y = y.view(y.shape[0], -1)
        y = self.relu4(self.fc2(self.relu3(self.fc1(y))))
        return self.relu5(self.fc3(y))


class ThreeConvs(nn.Module):
    """tests/test_single_channel_output.py: a conv stack that ends in one channel (and a one-channel BatchNorm);
    with ``transpose``, tests/test_pruner.py and tests/test_isomorphic.py (``test_pruner_TransposeConv``): conv, a
    stride-2 ConvTranspose2d, conv, each with BatchNorm."""

    def __init__(self, transpose: bool = False, out: int = 1):
        super().__init__()
        mid = nn.ConvTranspose2d(16, 64, 2, stride=2) if transpose else nn.Conv2d(16, 64, 2, stride=2)
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, stride=1, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = mid, nn.BatchNorm2d(64)
        self.conv3, self.bn3 = nn.Conv2d(64, out, 3, 1, 1), nn.BatchNorm2d(out)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.relu(self.bn3(self.conv3(x)))


class WideDeep(nn.Module):
    """tests/test_concat.py: wide & deep, an MLP (Linear, BatchNorm1d, ReLU, Dropout) and a Linear concatenated on
    the last dim, then a Linear and a sigmoid."""

    def __init__(self, input_dim: int = 32, dims=(32, 16)):
        super().__init__()
        layers: list[nn.Module] = []
        d = input_dim
        for h in dims:
            layers += [nn.Linear(d, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(p=0.2)]
            d = h
        layers.append(nn.Linear(d, 1))
        self.mlp = nn.Sequential(*layers)
        self.linear = nn.Linear(input_dim, 3)
        self.lin2 = nn.Linear(4, 1)

    def forward(self, x):
        x = x.reshape(x.shape[0], -1)
        x = torch.concat([self.linear(x), self.mlp(x)], dim=-1)
        return torch.sigmoid(self.lin2(x))


class InplaceSkip(nn.Module):
    """tests/graph_drawing.py (``Net``): three convs and an in-place ``x += skip``."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1)
        self.conv2 = nn.Conv2d(16, 8, kernel_size=3, stride=1, padding=1)
        self.conv3 = nn.Conv2d(8, 16, kernel_size=3, stride=1, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = self.conv1(x)
        skip = x
        x = self.conv2(x)
        x = self.conv3(x)
        x += skip
        return self.head(x)


class ChannelParameter(nn.Module):
    """tests/test_unwrapped_parameters.py (ConvNeXt's ``layer_scale``, an ``nn.Parameter`` used in forward): a
    per-channel scale and shift read directly by forward, between prunable convs."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.gamma = nn.Parameter(torch.rand(16, 1, 1) + 0.5)
        self.beta = nn.Parameter(torch.randn(16) * 0.1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.conv1(x) * self.gamma + self.beta.view(1, -1, 1, 1)
        x = F.relu(self.conv3(F.relu(self.conv2(F.relu(x)))))
        return self.fc(x.mean((2, 3)))


# ====================================================================== Torch-Pruning's op kinds (ops.py, OPTYPE)


class DepthwiseSeparable(nn.Module):
    """OPTYPE.DEPTHWISE_CONV: pointwise -> depthwise (groups = channels) -> pointwise, MobileNet's block."""

    def __init__(self):
        super().__init__()
        self.pw1, self.bn1 = nn.Conv2d(3, 32, 1, bias=False), nn.BatchNorm2d(32)
        self.dw, self.bn2 = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32)
        self.pw2, self.bn3 = nn.Conv2d(32, 48, 1, bias=False), nn.BatchNorm2d(48)
        self.fc = nn.Linear(48, 10)

    def forward(self, x):
        x = F.relu6(self.bn1(self.pw1(x)))
        x = F.relu6(self.bn2(self.dw(x)))
        x = F.relu6(self.bn3(self.pw2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class GroupConv(nn.Module):
    """OPTYPE.CONV with ``groups`` (ResNeXt's grouped 3x3): conv -> grouped conv (4 groups) -> conv."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.gconv, self.bn2 = nn.Conv2d(32, 64, 3, padding=1, groups=4), nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 10, 1)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.gconv(x)))
        return self.conv3(x).mean((2, 3))


class PReLUNet(nn.Module):
    """OPTYPE.PRELU: a per-channel PReLU (``num_parameters`` = channels) and a shared one."""

    def __init__(self):
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(3, 16, 3, padding=1), nn.PReLU(16)
        self.conv2, self.act2 = nn.Conv2d(16, 32, 3, padding=1), nn.PReLU()
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


class GroupNormNet(nn.Module):
    """OPTYPE.GN: GroupNorm with 4 groups of 4 and 8 groups of 4 channels (``groups=(1, 1)``: over all the
    channels, a LayerNorm, after every conv)."""

    def __init__(self, groups: tuple[int, int] = (4, 8)):
        super().__init__()
        self.conv1, self.gn1 = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(groups[0], 16)
        self.conv2, self.gn2 = nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(groups[1], 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.gn2(self.conv2(F.relu(self.gn1(self.conv1(x))))))
        return self.fc(x.mean((2, 3)))


class InstanceNormNet(nn.Module):
    """OPTYPE.IN: InstanceNorm2d with and without affine parameters (per-channel statistics); both follow their
    channels when they shrink."""

    def __init__(self):
        super().__init__()
        self.conv1, self.in1 = nn.Conv2d(3, 16, 3, padding=1), nn.InstanceNorm2d(16, affine=True)
        self.conv2, self.in2 = nn.Conv2d(16, 32, 3, padding=1), nn.InstanceNorm2d(32)
        self.conv3 = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = F.relu(self.in1(self.conv1(x)))
        x = F.relu(self.in2(self.conv2(x)))
        return self.conv3(x)


class LayerNormBlock(nn.Module):
    """OPTYPE.LN: ConvNeXt's block, channels-last LayerNorm then an MLP (``ratio`` x wide) and a residual add: the
    LayerNorm freezes the residual stream, the MLP's hidden width prunes."""

    def __init__(self, dim: int = 16, ratio: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, stride=4)
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw1 = nn.Linear(dim, ratio * dim)
        self.pw2 = nn.Linear(ratio * dim, dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.pw2(F.gelu(self.pw1(y))).permute(0, 3, 1, 2)
        return self.head((x + y).mean((2, 3)))


class LayerNormOverChannels(nn.Module):
    """OPTYPE.LN over the channels of every conv (LayerNorm on the channel-last map after each conv): nothing is
    left that may be removed."""

    def __init__(self):
        super().__init__()
        self.conv1, self.ln1 = nn.Conv2d(3, 16, 3, padding=1), nn.LayerNorm(16)
        self.conv2, self.ln2 = nn.Conv2d(16, 16, 3, padding=1), nn.LayerNorm(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.ln1(self.conv1(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.ln2(self.conv2(F.gelu(x)).permute(0, 2, 3, 1))
        return self.fc(x.mean((1, 2)))


class EmbeddingMLP(nn.Module):
    """OPTYPE.EMBED: token ids -> Embedding -> mean over tokens -> Linear -> ReLU -> Linear."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 32)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, ids):
        return self.fc2(F.relu(self.fc1(self.emb(ids).mean(1))))


class MHABlock(nn.Module):
    """OPTYPE.MHA: a transformer block with ``nn.MultiheadAttention`` and a wide MLP, on tokens."""

    def __init__(self, dim: int = 32, hidden: int = 256):
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.attn = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, tokens):
        t = self.embed(tokens)
        t = t + self.attn(t, t, t, need_weights=False)[0]
        t = t + self.fc2(F.gelu(self.fc1(t)))
        return self.head(t.mean(1))


class LSTMHead(nn.Module):
    """OPTYPE.LSTM: Conv1d features -> ``nn.LSTM`` -> the last step's Linear head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 16, 3, padding=1)
        self.lstm = nn.LSTM(16, 32, batch_first=True)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        out, _ = self.lstm(F.relu(self.conv(x)).transpose(1, 2))
        return self.fc(out[:, -1])


class UnbindAttention(nn.Module):
    """OPTYPE.UNBIND (timm's ViT ``Attention``): qkv reshaped to (3, B, heads, N, d), ``unbind(0)`` into q, k, v,
    softmax attention, projection; then an MLP."""

    def __init__(self, dim: int = 32, heads: int = 4, hidden: int = 256):
        super().__init__()
        self.heads = heads
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        B, N, C = t.shape
        qkv = self.qkv(t).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1) * (C // self.heads) ** -0.5).softmax(dim=-1)
        t = t + self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))
        t = t + self.fc2(F.gelu(self.fc1(t)))
        return self.head(t.mean(1))


class ExpandGate(nn.Module):
    """OPTYPE.EXPAND: a squeeze-excitation gate ``view``-ed to (N, C, 1, 1) and ``expand_as`` the feature map."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.fc1 = nn.Linear(32, 8)
        self.fc2 = nn.Linear(8, 32)
        self.conv2 = nn.Conv2d(32, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        b, c = x.shape[:2]
        g = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3)))))).view(b, c, 1, 1)
        x = F.relu(self.conv2(x * g.expand_as(x)))
        return self.head(x.mean((2, 3)))


class RepeatChannels(nn.Module):
    """OPTYPE.EXPAND on the channel dim: ``repeat(1, 2, 1, 1)`` tiles the channels before the next conv."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.head = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = F.relu(self.conv1(x)).repeat(1, 2, 1, 1)
        return self.head(F.relu(self.conv3(F.relu(self.conv2(x)))))


class StridedSlice(nn.Module):
    """OPTYPE.SLICE with a step: even and odd channels (``x[:, ::2]``, ``x[:, 1::2]``) into two convs."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.ca = nn.Conv2d(16, 16, 3, padding=1)
        self.cb = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = F.relu(self.stem(x))
        return self.head(F.relu(self.ca(y[:, ::2]) + self.cb(y[:, 1::2])))


class ChunkGLU(nn.Module):
    """OPTYPE.SPLIT by ``chunk``: a gated linear unit, ``a * sigmoid(b)`` of the two halves of a conv, and
    ``F.glu`` of another."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        a, b = self.conv1(x).chunk(2, dim=1)
        x = a * torch.sigmoid(b)
        return self.conv3(F.glu(self.conv2(x), dim=1))


class PixelShuffleNet(nn.Module):
    """OPTYPE.RESHAPE of the channels into space: a sub-pixel upsampler, conv -> ``PixelShuffle(2)`` -> conv."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.conv3 = nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.conv3(self.shuffle(x))


class ChannelShuffle(nn.Module):
    """OPTYPE.RESHAPE (ShuffleNet's ``channel_shuffle``): view (N, g, C/g, H, W), transpose, reshape back."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.gconv = nn.Conv2d(16, 16, 3, padding=1, groups=2)
        self.conv3 = nn.Conv2d(16, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.gconv(F.relu(self.conv1(x))))
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(F.relu(self.conv3(x)).mean((2, 3)))


class FunctionalConv(nn.Module):
    """OPTYPE.PARAMETER (an unwrapped weight): ``F.conv2d`` of an ``nn.Parameter`` between two nn.Conv2d."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.weight = nn.Parameter(torch.randn(16, 16, 3, 3) * 0.1)
        self.conv3 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(F.conv2d(F.relu(self.conv1(x)), self.weight, padding=1))
        return self.fc(F.relu(self.conv3(x)).mean((2, 3)))


class Conv1dNet(nn.Module):
    """OPTYPE.CONV in one dimension: Conv1d, BatchNorm1d, adaptive pooling, Linear."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv1d(4, 32, 5, padding=2), nn.BatchNorm1d(32)
        self.conv2, self.bn2 = nn.Conv1d(32, 64, 5, padding=2, stride=2), nn.BatchNorm1d(64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return self.fc(F.adaptive_avg_pool1d(x, 1).flatten(1))


class UpsampleConcat(nn.Module):
    """OPTYPE.CONCAT of an upsampled decoder map with its encoder skip (a U-Net, the shape of torchvision's FCN and
    DeepLab heads that tests/test_backward.py prunes): per-pixel output."""

    def __init__(self):
        super().__init__()
        self.enc1 = nn.Conv2d(3, 16, 3, padding=1)
        self.enc2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.dec = nn.Conv2d(48, 16, 3, padding=1)
        self.out = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        e1 = F.relu(self.enc1(x))
        e2 = F.relu(self.enc2(e1))
        up = F.interpolate(e2, scale_factor=2, mode="bilinear", align_corners=False)
        return self.out(F.relu(self.dec(torch.cat([up, e1], dim=1))))


class LayerScaleEverywhere(nn.Module):
    """tests/test_unwrapped_parameters.py (``layer_scale``) on every conv: per-channel ``nn.Parameter`` scales read
    in forward touch every prunable width."""

    def __init__(self):
        super().__init__()
        self.conv1, self.g1 = nn.Conv2d(3, 16, 3, padding=1), nn.Parameter(torch.rand(1, 16, 1, 1) + 0.5)
        self.conv2, self.g2 = nn.Conv2d(16, 16, 3, padding=1), nn.Parameter(torch.rand(1, 16, 1, 1) + 0.5)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = F.relu(self.conv1(x) * self.g1)
        x = F.relu(self.conv2(x) * self.g2)
        return self.head(x)


class DataDependentBranch(nn.Module):
    """Torch-Pruning traces a forward pass by autograd (tests/test_backward.py prunes any model that runs), so a
    branch on a tensor's value is no obstacle there; torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        if x.sum() > 0:
            x = F.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


class ShapeSizedReshape(nn.Module):
    """OPTYPE.RESHAPE sized by ``x.shape`` (timm's ``Attention``: ``reshape(B, N, C)`` with ``C`` read from the
    residual stream): qkv's output reshaped by the residual width C, its value slice projected and added back."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 4, stride=4)
        self.qkv = nn.Linear(16, 48)
        self.proj = nn.Linear(16, 16)
        self.fc1 = nn.Linear(16, 128)
        self.fc2 = nn.Linear(128, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        B, N, C = t.shape
        v = self.qkv(t).reshape(B, N, 3, C)[:, :, 2]
        t = t + self.proj(v)
        t = t + self.fc2(F.gelu(self.fc1(t)))
        return self.head(t.mean(1))


# ====================================================================== torchvision (tests/test_backward.py etc.)


def tv(name: str, size: int = 64, **kw: Any) -> Callable[[], tuple[nn.Module, Inputs]]:
    """A torchvision model by name: random weights, 10 classes, a 1x3xSIZExSIZE input."""

    def build() -> tuple[nn.Module, Inputs]:
        model = torchvision.models.get_model(name, weights=None, num_classes=10, **kw)
        return model, randn(1, 3, size, size)

    return build


def tv_tiny_vit() -> tuple[nn.Module, Inputs]:
    """torchvision's VisionTransformer (vit_b_16's class, tests/test_serialization.py) at 32 px, 2 layers."""
    from torchvision.models.vision_transformer import VisionTransformer

    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=256, num_classes=10
    )
    return model, randn(1, 3, 32, 32)


def tv_tiny_swin() -> tuple[nn.Module, Inputs]:
    """torchvision's SwinTransformer (swin_t's class) at 32 px: two stages of one block, windows of 4."""
    from torchvision.models.swin_transformer import SwinTransformer

    model = SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=[4, 4], num_classes=10
    )
    return model, randn(1, 3, 32, 32)


def tv_tiny_convnext() -> tuple[nn.Module, Inputs]:
    """torchvision's ConvNeXt (convnext_base's class, tests/test_unwrapped_parameters.py: ``CNBlock.layer_scale``
    is an nn.Parameter read in forward) at 32 px, two stages of one block."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    model = ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10)
    return model, randn(1, 3, 32, 32)


def tv_lraspp() -> tuple[nn.Module, Inputs]:
    """torchvision's lraspp_mobilenet_v3_large (segmentation, tests/test_backward.py): returns a dict."""
    model = torchvision.models.get_model(
        "lraspp_mobilenet_v3_large", weights=None, weights_backbone=None, num_classes=4
    )
    return model, randn(1, 3, 64, 64)


# ================================================================================================ the case table


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[], tuple[nn.Module, Inputs]]
    source: str  # the Torch-Pruning test file, op kind or torchvision model it comes from
    refusal: str | None = None  # None: it prunes; else a substring of the refusal's message (names the op)
    error: type[LcpError] = LcpError  # the refusal's class
    bug: tuple[str, type[BaseException]] | None = None  # a known engine bug: xfail(strict) reason, what it raises


def m(cls: type[nn.Module], *shape: int, **kw: Any) -> Callable[[], tuple[nn.Module, Inputs]]:
    """Build ``cls(**kw)`` with a random input of ``shape``."""
    return lambda: (cls(**kw), randn(*shape))


def two_inputs(cls: type[nn.Module]) -> Callable[[], tuple[nn.Module, Inputs]]:
    return lambda: (cls(), (randn(1, 32), randn(1, 16)))


NOTHING = "nothing in this model can be pruned safely: "
ACROSS = "normalizes across channels"
PARAM_OP = "(elementwise op with a parameter or constant tensor over channels)"
# a width read from x.shape sizes a reshape of another layer's output: the pruned forward fails, so lcp refuses
SHAPE_REFUSAL = "it does not run (RuntimeError: shape"

CASES: list[Case] = [
    # --- Torch-Pruning tests/
    Case("concat_split", m(ConcatSplit, 1, 8, 7, 7), "tests/test_concat_split.py"),
    Case("cascaded_concat", m(CascadedConcat, 1, 8, 7, 7), "tests/test_cascaded_concat.py"),
    Case("non_feature_dim_cat", m(NonFeatureDimCat, 1, 16, 7, 7), "tests/test_non_feature_dim_cat.py"),
    Case("reshape_transposed", m(ReshapeTransposed, 1, 32), "tests/test_reshape.py"),
    Case("split_shared_tuple_out", m(SplitShared, 1, 8, 7, 7), "tests/test_split.py"),
    Case("customized_layer", m(CustomizedNet, 1, 32), "tests/test_customized_layer.py"),
    Case("unused_parameters", m(CustomizedNet, 1, 32, unused=True), "tests/test_unused_parameters.py"),
    Case("channel_parameter", m(ChannelParameter, 1, 3, 16, 16), "tests/test_unwrapped_parameters.py"),
    Case(
        "layer_scale_everywhere",
        m(LayerScaleEverywhere, 1, 3, 16, 16),
        "tests/test_unwrapped_parameters.py",
        refusal=NOTHING + "mul " + PARAM_OP,
    ),
    Case(
        "multi_io",
        two_inputs(MultiIO),
        "tests/test_multiple_inputs_and_outputs.py",
        refusal=NOTHING + "every width is fixed: model input; model output",
    ),
    Case("multi_input", two_inputs(MultiInput), "tests/test_multiple_inputs_and_outputs.py"),
    Case("fc_residual", m(FCResidual, 1, 32), "tests/test_fully_connected_layers.py"),
    Case("lenet", m(LeNet, 1, 1, 28, 28), "tests/test_dependency_lenet.py"),
    Case("single_channel_output", m(ThreeConvs, 1, 3, 32, 32), "tests/test_single_channel_output.py"),
    Case("wide_deep", m(WideDeep, 1, 32), "tests/test_concat.py"),
    Case(
        "transpose_conv",
        m(ThreeConvs, 1, 3, 16, 16, transpose=True, out=8),
        "tests/test_pruner.py, tests/test_isomorphic.py",
    ),
    Case("inplace_skip", m(InplaceSkip, 1, 3, 16, 16), "tests/graph_drawing.py"),
    Case(
        "data_dependent_branch",
        m(DataDependentBranch, 1, 3, 16, 16),
        "tests/test_backward.py (Torch-Pruning traces by autograd)",
        refusal="symbolically traced variables cannot be used as inputs to control flow",
    ),
    # --- Torch-Pruning's op kinds (torch_pruning/ops.py)
    Case("depthwise", m(DepthwiseSeparable, 1, 3, 16, 16), "ops.py OPTYPE.DEPTHWISE_CONV"),
    Case("group_conv", m(GroupConv, 1, 3, 16, 16), "ops.py OPTYPE.CONV (groups)"),
    Case("prelu", m(PReLUNet, 1, 3, 16, 16), "ops.py OPTYPE.PRELU"),
    Case("group_norm", m(GroupNormNet, 1, 3, 16, 16), "ops.py OPTYPE.GN"),
    Case(
        "group_norm_one_group",
        m(GroupNormNet, 1, 3, 16, 16, groups=(1, 1)),
        "ops.py OPTYPE.GN",
        refusal=NOTHING + "GroupNorm (gn1) (GroupNorm " + ACROSS + ")",
    ),
    Case("instance_norm", m(InstanceNormNet, 1, 3, 16, 16), "ops.py OPTYPE.IN"),
    Case("layer_norm_block", m(LayerNormBlock, 1, 3, 32, 32), "ops.py OPTYPE.LN"),
    Case(
        "layer_norm_block_narrow_mlp",
        m(LayerNormBlock, 1, 3, 32, 32, ratio=1),
        "ops.py OPTYPE.LN",
        refusal="frozen by LayerNorm (norm): LayerNorm " + ACROSS,
        error=UnreachableBudget,
    ),
    Case(
        "layer_norm_channels",
        m(LayerNormOverChannels, 1, 3, 16, 16),
        "ops.py OPTYPE.LN",
        refusal=NOTHING + "LayerNorm (ln1) (LayerNorm " + ACROSS + ")",
    ),
    Case("embedding", lambda: (EmbeddingMLP(), torch.randint(0, 100, (1, 8))), "ops.py OPTYPE.EMBED"),
    Case("multihead_attention", m(MHABlock, 1, 16, 8), "ops.py OPTYPE.MHA"),
    Case("lstm", m(LSTMHead, 1, 4, 16), "ops.py OPTYPE.LSTM", refusal=NOTHING + "LSTM (lstm) (module LSTM is not"),
    Case("unbind_attention", m(UnbindAttention, 1, 3, 32, 32), "ops.py OPTYPE.UNBIND", refusal=SHAPE_REFUSAL),
    Case("shape_sized_reshape", m(ShapeSizedReshape, 1, 3, 16, 16), "ops.py OPTYPE.RESHAPE", refusal=SHAPE_REFUSAL),
    Case("expand_gate", m(ExpandGate, 1, 3, 16, 16), "ops.py OPTYPE.EXPAND"),
    Case("repeat_channels", m(RepeatChannels, 1, 3, 16, 16), "ops.py OPTYPE.EXPAND"),
    Case("strided_slice", m(StridedSlice, 1, 3, 16, 16), "ops.py OPTYPE.SLICE"),
    Case("chunk_glu", m(ChunkGLU, 1, 3, 16, 16), "ops.py OPTYPE.SPLIT"),
    Case("pixel_shuffle", m(PixelShuffleNet, 1, 3, 16, 16), "ops.py OPTYPE.RESHAPE"),
    Case("channel_shuffle", m(ChannelShuffle, 1, 3, 16, 16), "ops.py OPTYPE.RESHAPE"),
    Case("functional_conv", m(FunctionalConv, 1, 3, 16, 16), "ops.py OPTYPE.PARAMETER"),
    Case("conv1d", m(Conv1dNet, 1, 4, 32), "ops.py OPTYPE.CONV (1d)"),
    Case("upsample_concat", m(UpsampleConcat, 1, 3, 16, 16), "ops.py OPTYPE.CONCAT"),
    # --- torchvision (tests/test_backward.py's list, and the models the other tests build)
    Case("tv_resnet18", tv("resnet18"), "torchvision resnet18 (tests/test_dependency_graph.py, test_load.py)"),
    Case("tv_resnet50", tv("resnet50"), "torchvision resnet50 (tests/test_pruner.py, test_flops.py)"),
    Case("tv_resnext50_32x4d", tv("resnext50_32x4d"), "torchvision resnext50_32x4d (tests/test_backward.py)"),
    Case("tv_alexnet", tv("alexnet"), "torchvision alexnet (tests/test_pruning_fn.py)"),
    Case("tv_densenet121", tv("densenet121"), "torchvision densenet121 (tests/test_regularization.py)"),
    Case("tv_mobilenet_v2", tv("mobilenet_v2"), "torchvision mobilenet_v2 (tests/test_backward.py)"),
    Case("tv_mobilenet_v3_small", tv("mobilenet_v3_small"), "torchvision mobilenet_v3_small (tests/test_backward.py)"),
    Case("tv_mnasnet0_5", tv("mnasnet0_5"), "torchvision mnasnet0_5 (tests/test_backward.py)"),
    Case("tv_shufflenet_v2_x0_5", tv("shufflenet_v2_x0_5"), "torchvision shufflenet_v2_x0_5"),
    Case("tv_squeezenet1_1", tv("squeezenet1_1"), "torchvision squeezenet1_1 (tests/test_backward.py)"),
    Case("tv_efficientnet_b0", tv("efficientnet_b0"), "torchvision efficientnet_b0 (tests/test_backward.py)"),
    Case("tv_regnet_x_400mf", tv("regnet_x_400mf"), "torchvision regnet_x_400mf"),
    Case("tv_regnet_y_400mf", tv("regnet_y_400mf"), "torchvision regnet_y_400mf (tests/test_backward.py)"),
    Case(
        "tv_googlenet",
        tv("googlenet", aux_logits=False, init_weights=False),
        "torchvision googlenet(aux_logits=False), as tests/test_backward.py builds it",
    ),
    Case(
        "tv_googlenet_aux",
        tv("googlenet", aux_logits=True, init_weights=False),
        "torchvision googlenet with its auxiliary classifiers (only training runs them)",
        refusal="modules only training runs (aux1.",
    ),
    Case(
        "tv_inception_v3",
        tv("inception_v3", size=80, aux_logits=False, init_weights=False),
        "torchvision inception_v3(aux_logits=False) at 80 px, as tests/test_backward.py builds it",
    ),
    Case(
        "tv_inception_v3_aux_small",
        tv("inception_v3", size=80, aux_logits=True, init_weights=False),
        "torchvision inception_v3 with its aux classifier at 80 px, too small for the aux head in train mode",
        refusal="the original does not run in train mode on it",
    ),
    Case("tv_vit_tiny", tv_tiny_vit, "torchvision VisionTransformer (vit_b_16, tests/test_serialization.py)"),
    Case(
        "tv_swin_tiny",
        tv_tiny_swin,
        "torchvision SwinTransformer (swin_t, tests/test_backward.py)",
        refusal="frozen by LayerNorm (features.0.2): LayerNorm " + ACROSS,
        error=UnreachableBudget,
    ),
    Case("tv_convnext_tiny", tv_tiny_convnext, "torchvision ConvNeXt (tests/test_unwrapped_parameters.py)"),
    Case("tv_lraspp", tv_lraspp, "torchvision lraspp_mobilenet_v3_large (tests/test_backward.py)"),
]


def _params() -> list:
    out = []
    for c in CASES:
        marks = [pytest.mark.xfail(strict=True, raises=c.bug[1], reason=c.bug[0])] if c.bug else []
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


# ==================================================================================================== the checks


def _tensors(out: Any) -> list[torch.Tensor]:
    """The tensors of a model's output (a tensor, or tuples, lists and dicts of them), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _tensors(v)]
    return []


def _run(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    was = model.training
    model.eval()
    with torch.no_grad():
        out = _tensors(model(*inputs))
    model.train(was)
    return out


def _batch2(t: torch.Tensor) -> torch.Tensor:
    """A batch of two inputs like ``t`` (BatchNorm in train mode needs more than one value per channel)."""
    if t.is_floating_point():
        return torch.randn(2, *t.shape[1:])
    return torch.cat([t, t.flip(0)])


def _train_step(net: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[list[torch.Tensor], set[str]]:
    """Forward and backward in train mode, on a copy and a batch of 2: the output tensors and the names of the
    parameters that got a gradient (all of them finite)."""
    net = copy.deepcopy(net).train()
    outs = _tensors(net(*(_batch2(t) for t in inputs)))
    sum(o.float().square().mean() for o in outs).backward()
    grads = {name: q.grad for name, q in net.named_parameters() if q.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values()), [n for n, g in grads.items() if not g.isfinite().all()]
    return outs, set(grads)


def check_prunes(model: nn.Module, x: Inputs) -> lcp.PruneResult:
    """``prune_and_check`` generalized to several inputs and outputs, to non-float inputs and to parameters that
    forward never reads (no gradient in the original either); plus fewer parameters after the cut."""
    inputs = x if isinstance(x, tuple) else (x,)
    with torch.no_grad():
        out = model.eval()(*inputs)
    base = _tensors(out)
    single = isinstance(out, torch.Tensor) and len(inputs) == 1 and inputs[0].is_floating_point()
    _, trained = _train_step(model, inputs)
    if single and trained == {name for name, _ in model.named_parameters()}:
        res = prune_and_check(model, inputs[0], budget=BUDGET, round_to=1)
    else:
        state = {k: v.clone() for k, v in model.state_dict().items()}
        res = lcp.prune(model, x, budget=BUDGET, round_to=1)
        p = res.plan
        assert res.verification is not None and res.verification.ok, res.verification
        assert p.macs_base == lcp.count_macs(model, x) and p.params_base == lcp.count_params(model)
        assert p.macs <= BUDGET * p.macs_base
        assert lcp.count_macs(res.model, x) == p.macs and lcp.count_params(res.model) == p.params
        after = model.state_dict()
        assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)
        assert [t.shape for t in _run(res.model, inputs)] == [t.shape for t in base]
        outs, grads = _train_step(res.model, inputs)
        assert [t.shape[1:] for t in outs] == [t.shape[1:] for t in base]
        assert trained <= grads, f"no gradient for {sorted(trained - grads)}"
    p = res.plan
    assert p.macs < p.macs_base and p.params < p.params_base, p
    assert lcp.count_params(res.model) < lcp.count_params(model)
    return res


@pytest.mark.parametrize("case", _params())
def test_peer_case_prunes_or_is_refused_by_name(case: Case) -> None:
    torch.manual_seed(0)
    model, x = case.build()
    model.eval()
    if case.refusal is None:
        check_prunes(model, x)
        return
    with pytest.raises(LcpError) as err:
        lcp.prune(model, x, budget=BUDGET, round_to=1)
    msg = str(err.value)
    assert "does not match the masked original" not in msg, msg  # a failed verification is a bug, not a refusal
    assert isinstance(err.value, case.error), (type(err.value), msg)
    assert case.refusal in msg, msg


def test_case_table_is_well_formed() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert all(c.source for c in CASES)
    assert all(c.refusal is None or c.refusal.strip() for c in CASES)
