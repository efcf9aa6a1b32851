"""Whole released detector networks run as frozen towers: the weights are the release's own ``.pth`` file.

Tiny-LaDeDa and NPR (:mod:`deepfake.towers.families.ladeda`, :mod:`deepfake.towers.families.npr`)
release a whole network, not a head on a foundation model. Each is a tower family whose network
is the release up to its pooling (frozen, BatchNorm in eval) and whose feature is the pooled vector
the release's last linear layer reads; that layer becomes a one-logit ``linear`` head
(:mod:`deepfake.model.released_networks`). A tower is named by the path of the file itself
(``--model WildRF_Tiny_LaDeDa.pth``): the family is the one whose keys and shapes the file has,
and the file's sha256 is part of the tower's identity, so two releases of one network never share
cached features.

Two preprocessings (both ImageNet mean and std), chosen by ``--preprocess`` or a run's record:

- ``resize`` (the papers' test transform): ``Resize((256, 256))`` bilinear on the PIL image, no crop.
  ``--protocol`` gives this one, whatever the protocol's own crop: it is what reproduces the papers' tables.
- ``native``: the whole image, unresized; the features are the mean over every position. Both
  networks are fully convolutional, so nothing but the pooling depends on the image's size.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from deepfake.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from deepfake.towers.backbones import Backbone
from deepfake.towers.base import ImageTower, TowerOutput
from deepfake.towers.registry import family_for_state
from deepfake.towers.weights import WeightsError
from deepfake.utils.hashing import file_sha256

log = logging.getLogger(__name__)

PAPER_SIZE = 256  # both papers test at Resize((256, 256))
# predict's (and an imported run's) default: the paper's transform. Measured on public real
# photographs with the WildRF release of Tiny-LaDeDa (benchmarks/released_native_vs_resize.py;
# docs/published-detectors.md), native size did no better (mean AP 0.50 against 0.57, both near chance).
DEFAULT_MODE = "resize"
NETWORK_MODES = ("native", "resize")  # what `deepfake import --preprocess` offers for these networks
NETWORK_FILE_SUFFIXES = (".pth", ".pt")


def paper_preprocess() -> Preprocess:
    """The papers' test transform: Resize((256, 256)) bilinear on the PIL image, no crop, ImageNet mean/std."""
    return Preprocess("squash", PAPER_SIZE, IMAGENET_MEAN, IMAGENET_STD, "bilinear", pil=True)


def network_preprocess(mode: str | None) -> Preprocess:
    """The preprocessing a mode names for these networks: ``resize`` (the paper's), ``native`` or ``crop``."""
    mode = mode or DEFAULT_MODE
    if mode in ("resize", "squash"):
        return paper_preprocess()
    if mode in ("native", "crop"):
        return Preprocess(mode, PAPER_SIZE, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    raise WeightsError(f"--preprocess {mode} does not apply to a whole released network; use resize (the paper's "
                       "transform), native (the whole unresized image) or crop")


def read_network_state(path: Path) -> dict[str, torch.Tensor]:
    """A release's state dict, read with ``weights_only=True``: nothing in the file is run (a file holding other
    objects is refused, saying so), and anything but a dict of named tensors is refused naming what it is."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        if "Weights only load failed" in text:
            reason = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. |\n|$)", text)
            raise WeightsError(f"{path}: refused: it holds objects other than tensors "
                               f"({reason.group(1) if reason else 'not a plain tensor file'}), and unpickling them "
                               f"could run code from the file; nothing from it was run") from None
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint (truncated, or not a .pth file): "
                           f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}") from None
    if not isinstance(payload, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in payload.items()):
        raise WeightsError(f"{path}: expected a dict of named tensors (a state dict), found {type(payload).__name__}")
    return dict(payload)


def block_count(state: dict, prefix: str) -> int:
    """How many blocks ``prefix.<i>.`` the state dict holds (read from its keys, never a table)."""
    found = {int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def load_strict(module: nn.Module, state: dict, where: str) -> None:
    """``module.load_state_dict(state, strict=True)``, its error naming the file."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{where}: the weights do not fit the network: {exc}") from None


def split_head(state: dict, head_prefix: str) -> tuple[dict, dict]:
    """(the network's tensors, the last linear layer's ``weight`` and ``bias``)."""
    net = {k: v for k, v in state.items() if not k.startswith(head_prefix + ".")}
    head = {k[len(head_prefix) + 1:]: v for k, v in state.items() if k.startswith(head_prefix + ".")}
    return net, head


class NetworkTower(ImageTower):
    """A released network up to its pooling: pixels -> the feature map -> its mean over every position.

    ``net(x)`` gives the feature map [B, D, h, w]. A network whose positions each see a small patch
    (``patch_scores``) lets the head score every position (:meth:`feature_map`; ``predict --heatmap``).
    """

    patch_scores: bool = False
    feature_dtype = torch.float32  # logits of hundreds from cancelling terms: float16 would move them

    def __init__(self, net: nn.Module, backbone: Backbone, identity: dict, feature_dim: int, feature: str):
        super().__init__()
        self.net = net
        self.backbone = backbone
        self.feature_dim = int(feature_dim)
        self.num_layers = 0
        self.hidden_size = 0
        self.taps = ()
        self.identity = {**identity, "feature_dim": self.feature_dim, "feature": feature, "layer_token": "none"}
        self.freeze()

    @property
    def paper_preprocess(self) -> Preprocess:
        """The paper's test transform: what ``--protocol`` selects for this tower."""
        return paper_preprocess()

    def feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, D, h, w]: the feature at every position (the pooling's input)."""
        return self.net(pixel_values.to(self.dtype))

    def forward(self, pixel_values: torch.Tensor, layers: bool | str = False) -> TowerOutput:
        if layers:
            raise ValueError(f"{self.backbone.name}: a released {self.identity['family']} network has no transformer "
                             "blocks; --feature_layers needs a ViT tower")
        return TowerOutput(embeds=self.pool(self.feature_map(pixel_values)), store_dtype=self.feature_dtype)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        """[B, D, h, w] -> [B, D]: the mean over every position.

        The paper's transform pools as the authors' ``AvgPool2d`` does (its summation order: a
        logit of 1,000 built from large cancelling terms moves in the 4th digit with another order).
        At native size, where the authors' pooled path cannot run, the mean is accumulated in
        float64: a photo's 200,000 positions summed in float32 lose the 3rd digit.
        """
        if self.preprocess.mode == "native":
            return fmap.double().mean(dim=(2, 3)).to(fmap.dtype)
        return F.avg_pool2d(fmap, fmap.shape[-2:]).flatten(1)


def network_identity(path: Path, family: str) -> dict:
    """Where the weights are and which they are: the sha256 tells two releases (or a fine-tune) apart."""
    return {"model": str(path.resolve()), "family": family, "revision": None, "weights_sha256": file_sha256(path)}


def is_network_file(model: str) -> bool:
    path = Path(model).expanduser()
    return path.suffix.lower() in NETWORK_FILE_SUFFIXES and path.is_file()


def load_network_file(model: str, preprocess_mode: str | None = None) -> NetworkTower:
    """The frozen tower of a released network's ``.pth`` file, its family found from the file's keys and shapes."""
    path = Path(model).expanduser()
    state = read_network_state(path)
    tower_family = family_for_state(state, str(path))
    backbone = Backbone(str(path.resolve()), tower_family.name, str(path.resolve()), network_preprocess(preprocess_mode))
    tower = tower_family.from_state(state, backbone, network_identity(path, tower_family.name))
    log.info("loaded %s network from %s (feature dim %d, %s preprocessing)", tower_family.name, path,
             tower.feature_dim, tower.preprocess.mode)
    return tower


# --- whole networks by their released detector's name ------------------------------------
# `--model tiny-ladeda-wildrf` names a released detector, a record of the model layer
# (deepfake.model.releases), which sits above this one and keeps the cache of imported releases.
# Rather than read that layer's records or run folders from here, the model layer hands this one a
# resolver (deepfake.model.detectors registers it on import): name -> the release's checked file in
# the cache. The tower is then loaded from that file as from any path, so its identity is the file's
# sha256, whatever name was used.


class NetworkNames:
    """Names of released whole networks (``names``) and how one becomes its cached release file (``locate``).

    ``locate(name)`` returns the file, or raises :class:`WeightsError` saying how to put it in the cache.
    """

    def __init__(self) -> None:
        self.names: Callable[[], list[str]] = list
        self.locate: Callable[[str], Path] | None = None

    def register(self, names: Callable[[], list[str]], locate: Callable[[str], Path]) -> None:
        """Install the model layer's resolver."""
        self.names, self.locate = names, locate

    def known(self, model: str) -> bool:
        """Whether ``model`` is a released whole network's name (and not a path that exists here)."""
        return self.locate is not None and model in self.names() and not Path(model).expanduser().exists()

    def file(self, model: str) -> Path:
        """The cached release file of the network named ``model``."""
        if self.locate is None:
            raise WeightsError(f"{model}: released networks by name are not available here")
        return self.locate(model)


NETWORK_NAMES = NetworkNames()
