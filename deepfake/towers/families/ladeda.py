"""Tiny-LaDeDa (Cavia, Horwitz, Reiss, Hoshen, *Real-Time Deepfake Detection in the Real-World*, 2024).

A four-convolution patch network, written here from its description: the right-diagonal
gradient of each colour plane (a depthwise 3x3 kernel ``[[-2,-1,0],[-1,0,1],[0,1,2]]``, zero
padding, same size), a 1x1 convolution, a 3x3 convolution without padding, BatchNorm, ReLU, then
one bottleneck (1x1 convolution, BN, ReLU, 3x3 convolution of stride 2 without padding, BN, ReLU;
no residual). Each output position sees a 9 x 9 patch of the image (126 x 126 positions at 256 px);
the release's ``fc`` scores each position, and the image's score is the ``fc`` of the mean
feature (equal to the mean of the patch scores). Widths are read from the file.

The weights are the release's ``.pth`` (``weights/Tiny_LaDeDa/{WildRF,ForenSynth}_Tiny_LaDeDa.pth``),
under a research-only licence: they are never copied into this project.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepfake.towers.backbones import Backbone
from deepfake.towers.registry import TowerFamily, register
from deepfake.towers.released import NetworkTower, load_strict, read_network_state, split_head

FAMILY = "tiny-ladeda"
HEAD_KEY = "fc"
FEATURE = "mean over every position of the last convolution's ReLU output (a 9 x 9 patch each)"
RIGHT_DIAGONAL = ((-2.0, -1.0, 0.0), (-1.0, 0.0, 1.0), (0.0, 1.0, 2.0))
_CONV_KEYS = ("conv1.weight", "conv2.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight")


class _Bottleneck(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=2, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class TinyLaDeDa(nn.Module):
    """Pixels [B, 3, H, W] -> features [B, width, (H - 5) // 2 + 1, (W - 5) // 2 + 1], no pooling."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        kernel = torch.tensor(RIGHT_DIAGONAL).expand(channels, 1, 3, 3).clone()
        self.register_buffer("gradient", kernel, persistent=False)
        self.conv1 = nn.Conv2d(channels, width, 1, bias=False)
        self.conv2 = nn.Conv2d(width, width, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(_Bottleneck(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.gradient.to(x.dtype), padding=1, groups=x.shape[1])
        return self.layer1(F.relu(self.bn1(self.conv2(self.conv1(x)))))


def fits_state(state: dict) -> bool:
    """The release's keys: the stem, one bottleneck of two convolutions, ``fc`` (no conv3: not a ResNet)."""
    net, head = split_head(state, HEAD_KEY)
    shapes_ok = all(k in net and net[k].dim() == 4 for k in _CONV_KEYS)
    return (shapes_ok and set(head) == {"weight", "bias"} and "layer1.0.conv3.weight" not in net
            and "layer1.1.conv1.weight" not in net and tuple(net["conv2.weight"].shape[-2:]) == (3, 3))


def network_from_state(state: dict, where: str) -> TinyLaDeDa:
    """The network of a release's state dict (its ``fc`` left out), widths read from the file."""
    net_state, _ = split_head(state, HEAD_KEY)
    width, channels = net_state["conv1.weight"].shape[:2]
    net = TinyLaDeDa(int(channels), int(width))
    load_strict(net, {k: v.float() if v.is_floating_point() else v for k, v in net_state.items()}, where)
    return net.eval()


class TinyLaDeDaTower(NetworkTower):
    patch_scores = True


def tower_from_state(state: dict, backbone: Backbone, identity: dict) -> TinyLaDeDaTower:
    net = network_from_state(state, backbone.source)
    return TinyLaDeDaTower(net, backbone, identity, net.layer1[0].bn2.num_features, FEATURE)


def load_ladeda_tower(files, backbone: Backbone, identity: dict) -> TinyLaDeDaTower:
    return tower_from_state(read_network_state(backbone.source), backbone, identity)


register(TowerFamily(FAMILY, (), load_ladeda_tower, None, feature=FEATURE, fits_state=fits_state,
                     from_state=tower_from_state, head_key=HEAD_KEY))
