"""What every frozen tower is: pixels in, one feature vector per image out (and per-block tokens).

The contract the rest of the package relies on::

    tower(pixel_values, layers=False) -> TowerOutput(embeds [B, D], layers [B, rows, hidden] | None, tap)
    tower.feature_dim, tower.num_layers, tower.hidden_size, tower.taps, tower.preprocess, tower.cache_identity()

``layers`` names the per-block tokens wanted: ``False`` none; ``True`` (or ``"block"``) each
block's output, [B, num_layers + 1, hidden], row 0 the embedding output (before block 1) and row
i the token after block i (the CLS token, or the mean token for towers without one; the
identity says which); ``"ln2"`` the output of each block's second layer norm (the normalised
input of its MLP, RINE's tap), CLS token, [B, num_layers, hidden], row i - 1 for block i. A
tower lists the taps it has in ``taps``; ``TowerOutput.tap`` says which one ``layers`` holds, and
:func:`tap_rows` turns block numbers into its rows.

A :class:`TowerShape` is that contract read from a checkpoint's config alone, so a tower can be
named (and its cached features found) without building it; see :mod:`deepfake.towers.deferred`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from deepfake.data.preprocess import Preprocess
from deepfake.towers.backbones import Backbone
from deepfake.towers.weights import WeightFiles, WeightsError

log = logging.getLogger(__name__)


# Per-block taps: block output (the residual stream after each block, block 0 = the embedding
# output) and the output of each block's ln_2 / layer_norm2 (blocks 1..num_layers). Their first block.
BLOCK_TAP, LN2_TAP = "block", "ln2"
TAP_FIRST_BLOCK = {BLOCK_TAP: 0, LN2_TAP: 1}


def layers_request(tap: str, blocks) -> bool | str:
    """What to pass as ``layers`` to get ``blocks`` of ``tap``: ``False`` for none, ``True`` for block outputs."""
    if not blocks:
        return False
    return True if tap == BLOCK_TAP else tap


def requested_tap(layers: bool | str | None) -> str | None:
    """The tap a ``layers`` argument asks for (``None``: no per-block tokens)."""
    if layers is None or layers is False:
        return None
    if layers is True:
        return BLOCK_TAP
    if layers not in TAP_FIRST_BLOCK:
        raise ValueError(f"unknown per-block tap {layers!r}; known: {', '.join(TAP_FIRST_BLOCK)}")
    return layers


def tap_rows(tap: str, blocks) -> list[int]:
    """Rows of a tower's ``layers`` tensor for block numbers ``blocks`` of ``tap``."""
    first = TAP_FIRST_BLOCK[tap]
    return [int(b) - first for b in blocks]


@dataclass(frozen=True)
class TowerShape:
    """What a tower is, from its config alone: the sizes, the names of its feature and block token, its taps."""

    feature_dim: int
    num_layers: int
    hidden_size: int
    feature: str
    layer_token: str
    taps: tuple[str, ...] = (BLOCK_TAP,)


def tower_identity(identity: dict, feature_dim: int, feature: str, layer_token: str) -> dict:
    """The identity of a transformers tower: where its weights come from plus what it outputs."""
    return {**identity, "feature_dim": int(feature_dim), "feature": feature, "layer_token": layer_token}


def transformers_config(config_class, config: dict, where: str):
    """``config_class`` built from a checkpoint's config dict as ``from_pretrained`` builds it.

    A joint model's config (e.g. ``siglip``) holds the vision tower's under ``vision_config``;
    the class's ``base_config_key`` says so, and transformers' defaults fill what is not given.
    Only a configuration class is needed: no modeling code is imported.
    """
    key = getattr(config_class, "base_config_key", "")
    sub = config.get(key) if key else None
    try:
        return config_class.from_dict(dict(sub if isinstance(sub, dict) else config))
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{where}: not a valid {config_class.__name__}: {exc}") from exc


@dataclass
class TowerOutput:
    """What a tower gives per image: the head's input and, on request, each block's token."""

    embeds: torch.Tensor  # [B, D]
    layers: torch.Tensor | None = None  # [B, num_layers + 1, hidden] (block tap) or [B, num_layers, hidden] (ln2)
    tap: str = BLOCK_TAP  # which per-block tokens ``layers`` holds
    store_dtype: torch.dtype | None = None  # the tower's ``feature_dtype``


class ImageTower(nn.Module):
    """A frozen feature extractor with the record that says how to feed it."""

    backbone: Backbone
    feature_dim: int
    num_layers: int = 0
    hidden_size: int = 0
    taps: tuple[str, ...] = (BLOCK_TAP,)
    identity: dict
    # How its features are stored and rounded (None: the cache's float16). float32 where a head
    # reads large cancelling terms that float16 would move (the released networks' logits).
    feature_dtype: torch.dtype | None = None

    @property
    def preprocess(self) -> Preprocess:
        return self.backbone.preprocess

    def freeze(self) -> ImageTower:
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> ImageTower:
        # The tower is frozen: a classifier switched to training mode must not turn on
        # anything stochastic inside it.
        return super().train(False)

    @property
    def dtype(self) -> torch.dtype:
        p = next(self.parameters(), None)
        return p.dtype if p is not None else torch.float32

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def recorded_problem(self, recorded: dict) -> str | None:
        """Why a head recorded on the tower ``recorded`` (a checkpoint's ``tower``) would not read this tower's
        features; None when it would. The weights' hash decides, else the revision, else the name and family."""
        loaded = self.identity
        for key in ("weights_sha256", "revision"):
            if recorded.get(key) and loaded.get(key):
                if recorded[key] == loaded[key]:
                    return None
                break
        else:
            if recorded.get("model") == loaded.get("model") and recorded.get("family") == loaded.get("family"):
                return None
        return (f"head was trained on tower {recorded.get('model')!r} "
                f"({recorded.get('revision') or str(recorded.get('weights_sha256', ''))[:12]}), "
                f"but {loaded.get('model')!r} was loaded; features would not match")

    def cache_identity(self) -> dict:
        """What must match for cached features of this tower to be reused."""
        return {**self.identity, "preprocess": self.preprocess.to_dict()}

    def fuse_for_inference(self) -> ImageTower:
        """Rewrite the tower into faster kernels that compute the same features (in place)."""
        return self


class TransformersTower(ImageTower):
    """A transformers vision model run with SDPA; subclasses say which output is the feature.

    ``feature`` names the feature in the identity (``projected``, ``pooled``, ``cls``,
    ``cls+mean_patch``); ``layer_token`` names the per-block token (``cls`` or ``mean``).
    """

    feature: str = "pooled"
    layer_token: str = "cls"

    def __init__(self, model: nn.Module, backbone: Backbone, identity: dict, feature_dim: int):
        super().__init__()
        self.model = model
        self.backbone = backbone
        config = model.config
        self.feature_dim = int(feature_dim)
        self.num_layers = int(config.num_hidden_layers)
        self.hidden_size = int(config.hidden_size)
        self.identity = tower_identity(identity, self.feature_dim, self.feature, self.layer_token)
        self.freeze()

    def features(self, out) -> torch.Tensor:
        """The head's input from the model's output."""
        return out.pooler_output

    def block_tokens(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """[B, num_layers + 1, hidden] from the embedding output and every block's output."""
        if self.layer_token == "mean":
            return torch.stack([h.mean(dim=1) for h in hidden_states], dim=1)
        return torch.stack([h[:, 0] for h in hidden_states], dim=1)

    def forward(self, pixel_values: torch.Tensor, layers: bool | str = False) -> TowerOutput:
        tap = requested_tap(layers)
        if tap not in (None, BLOCK_TAP):
            raise ValueError(f"{self.backbone.name}: this tower has no {tap!r} tap (it has {', '.join(self.taps)})")
        layers = tap is not None
        out = self.model(pixel_values=pixel_values.to(self.dtype), output_hidden_states=layers)
        tokens = self.block_tokens(out.hidden_states) if layers else None
        if tokens is not None and tokens.shape[1] != self.num_layers + 1:
            raise RuntimeError(f"{self.backbone.name}: {tokens.shape[1]} hidden states for "
                               f"{self.num_layers} blocks; expected the embedding output plus one per block")
        return TowerOutput(embeds=self.features(out), layers=tokens)


def load_transformers_model(model_class, files: WeightFiles, where: str) -> nn.Module:
    """``model_class.from_pretrained`` on the resolved files, in fp32 with SDPA, strictly.

    transformers reads sharded checkpoints and maps a joint model's keys (text tower
    dropped) onto the vision model; a vision weight missing from the files, or of another
    shape, is an error naming it, never a random initialisation.
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report is checked below, not printed
    progress = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model, info = model_class.from_pretrained(
            str(files.directory), attn_implementation="sdpa", dtype=torch.float32, output_loading_info=True
        )
    except WeightsError:
        raise
    except Exception as exc:
        raise WeightsError(f"{where}: cannot load as {model_class.__name__}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress:
            hf_logging.enable_progress_bar()
    problems = []
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        problems.append(f"missing tower keys: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
    if info.get("mismatched_keys"):
        mismatched = sorted(str(k) for k in info["mismatched_keys"])
        problems.append(f"shapes differ from the config: {', '.join(mismatched[:10])}")
    if problems:
        raise WeightsError(f"{where}: weights do not match the config: " + "; ".join(problems))
    return model.eval()
