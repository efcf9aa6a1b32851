"""NPR (Tan et al., *Rethinking the Up-Sampling Operations in CNN-based Generative Network for Generalizable
Deepfake Detection*, CVPR 2024), written here from its description.

The input is the neighbouring-pixel residual: each pixel minus the top-left pixel of its 2 x 2
block (``x - up(down(x))`` with nearest-neighbour halving and doubling), times 2/3. Then a
ResNet-50's stem (3x3 convolution of stride 2, BN, ReLU, 3x3 max pooling of stride 2) and its first
two stages of bottlenecks (``layer1`` of width 64, ``layer2`` of width 128 and stride 2; 256 and 512
channels out), averaged over every position: 512 features, which the release's ``fc1`` scores.
Block counts and widths are read from the file.

An odd height or width has no 2 x 2 blocks along its last row or column; the authors' code fails
there (the halved-and-doubled image is one pixel short). Here the last row or column is dropped
first, as their commented-out code did: an image of 211 x 301 is scored on its 210 x 300 top-left pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepfake.towers.backbones import Backbone
from deepfake.towers.registry import TowerFamily, register
from deepfake.towers.released import NetworkTower, block_count, load_strict, read_network_state, split_head

FAMILY = "npr"
HEAD_KEY = "fc1"
FEATURE = "mean over every position of ResNet-50 layer2 on the neighbouring-pixel residual"


class _Bottleneck(nn.Module):
    """1x1, 3x3 (the stride), 1x1 convolutions with BN; the input, projected where its shape changes, added."""

    def __init__(self, inplanes: int, planes: int, out: int, stride: int, project: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = (nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
                           if project else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


def _stage(state: dict, name: str, inplanes: int, stride: int) -> tuple[nn.Sequential, int]:
    """One stage of bottlenecks with the file's block count and widths; returns it and its output width."""
    blocks = []
    for i in range(block_count(state, name)):
        planes, out = state[f"{name}.{i}.conv1.weight"].shape[0], state[f"{name}.{i}.conv3.weight"].shape[0]
        blocks.append(_Bottleneck(inplanes, int(planes), int(out), stride if i == 0 else 1,
                                  f"{name}.{i}.downsample.0.weight" in state))
        inplanes = int(out)
    return nn.Sequential(*blocks), inplanes


def neighbour_residual(x: torch.Tensor) -> torch.Tensor:
    """Each pixel minus the top-left pixel of its 2 x 2 block; an odd last row or column is dropped first."""
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[..., :h, :w]
    b, c = x.shape[:2]
    blocks = x.reshape(b, c, h // 2, 2, w // 2, 2)
    return (blocks - blocks[:, :, :, :1, :, :1]).reshape(b, c, h, w)


class NPR(nn.Module):
    """Pixels [B, 3, H, W] -> layer2's features [B, 512, ~H / 8, ~W / 8], no pooling."""

    def __init__(self, state: dict):
        super().__init__()
        stem = state["conv1.weight"].shape[0]
        self.conv1 = nn.Conv2d(state["conv1.weight"].shape[1], stem, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.layer1, width = _stage(state, "layer1", int(stem), 1)
        self.layer2, width = _stage(state, "layer2", width, 2)
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(neighbour_residual(x) * (2.0 / 3.0))
        x = F.max_pool2d(F.relu(self.bn1(x)), 3, stride=2, padding=1)
        return self.layer2(self.layer1(x))


def fits_state(state: dict) -> bool:
    """The release's keys: a 3x3 stem, bottlenecks with conv3 in ``layer1`` and ``layer2``, ``fc1``."""
    net, head = split_head(state, HEAD_KEY)
    return (set(head) == {"weight", "bias"} and "conv1.weight" in net and net["conv1.weight"].dim() == 4
            and "layer1.0.conv3.weight" in net and "layer2.0.conv3.weight" in net and "layer3.0.conv1.weight" not in net)


def tower_from_state(state: dict, backbone: Backbone, identity: dict) -> NetworkTower:
    net_state, _ = split_head(state, HEAD_KEY)
    net = NPR(net_state)
    load_strict(net, {k: v.float() if v.is_floating_point() else v for k, v in net_state.items()}, backbone.source)
    return NetworkTower(net.eval(), backbone, identity, net.width, FEATURE)


def load_npr_tower(files, backbone: Backbone, identity: dict) -> NetworkTower:
    return tower_from_state(read_network_state(backbone.source), backbone, identity)


register(TowerFamily(FAMILY, (), load_npr_tower, None, feature=FEATURE, fits_state=fits_state,
                     from_state=tower_from_state, head_key=HEAD_KEY))
