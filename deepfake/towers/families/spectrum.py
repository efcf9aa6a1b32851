"""Spectral baseline tower: no weights, the frequency-analysis detector of the GAN literature.

Features are the azimuthally averaged log power spectrum of the image's high-pass
residual (Durall et al., "Watch your up-convolution", 2020): up-sampling layers leave
periodic traces that show up as bumps and lifted tails in this 1-D spectrum. It goes
through the same head, cache, training, evaluation and prediction code as LanguageBind.

What is analysed is the record's preprocessing, always at native resolution. By default
(``--model spectrum``, ``tiles`` mode) the spectra of 4 x 4 tiles of 256 px spread evenly over
the whole image are averaged (Welch's method): a 256 px centre crop of a 1024 px photo keeps
6% of its pixels, the tiles all of them, so the estimate is less noisy and does not depend on
what happens to sit in the centre. The other analyses are records of their own:
``spectrum-tiles256`` (the default's analysis under a name that will not change),
``spectrum-tiles512`` (2 x 2 tiles of 512 px), ``spectrum-crop256`` (the earlier centre crop),
``spectrum-window512`` and ``spectrum-window1024`` (one periodogram of the largest centred square
up to 512 or 1024 px). On the photo-sized synthetic benchmark the tiles gave the highest AP with
the same classifier (``tests/test_synthetic.py`` asserts it against the crop). On two public sets
of real photos and generated images (``benchmarks/spectral_real_photos.py``; docs/towers.md,
"The spectral baseline on real photographs") every analysis stayed near chance, with the
repaired head too; the 4 x 4 tiles had the best validation AP on the larger set and the default
stayed. Whatever the window, the spectrum is sampled at ``bins`` rings between DC and Nyquist, so
every analysis gives the same feature size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepfake.towers.backbones import Backbone
from deepfake.towers.base import ImageTower, TowerOutput
from deepfake.towers.registry import TowerFamily, register

SPECTRUM_VERSION = "1"
DEFAULT_BINS = 128


def highpass_residual(gray: torch.Tensor) -> torch.Tensor:
    """Image minus its 3x3 local mean: keeps the fine structure where up-sampling traces live."""
    kernel = torch.full((1, 1, 3, 3), 1.0 / 9.0, dtype=gray.dtype, device=gray.device)
    smooth = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="reflect"), kernel)
    return gray - smooth


def radial_profile(power: torch.Tensor, bins: int) -> torch.Tensor:
    """Mean of ``power`` [B, H, W] (DC at the center) over ``bins`` rings of equal width."""
    h, w = power.shape[-2:]
    ys = torch.arange(h, device=power.device, dtype=torch.float32) - h // 2
    xs = torch.arange(w, device=power.device, dtype=torch.float32) - w // 2
    radius = torch.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2) / (min(h, w) / 2)
    ring = torch.clamp((radius * bins).long(), max=bins)  # bins: the corners beyond Nyquist
    flat = power.flatten(1)
    sums = torch.zeros(power.shape[0], bins + 1, device=power.device).index_add_(1, ring.flatten(), flat)
    counts = torch.bincount(ring.flatten(), minlength=bins + 1).clamp(min=1)
    return (sums / counts)[:, :bins]


def spectral_profile(gray: torch.Tensor, bins: int) -> torch.Tensor:
    """[B, H, W] gray images -> [B, bins] radial log power spectrum of the high-pass residual.

    Rings are one frequency step wide (``min(H, W) // 2`` of them), then averaged (or, for a
    window narrower than ``2 * bins``, interpolated) down to ``bins``, so the feature means the
    same frequencies for every window size.
    """
    residual = highpass_residual(gray[:, None])[:, 0]
    h, w = residual.shape[-2:]
    window = torch.hann_window(w, device=gray.device)
    window = window[None, :] * torch.hann_window(h, device=gray.device)[:, None] if h == w else 1.0
    spectrum = torch.fft.fftshift(torch.fft.fft2(residual * window), dim=(-2, -1))
    power = torch.log1p(spectrum.abs() ** 2)
    rings = max(1, min(h, w) // 2)
    profile = radial_profile(power, rings)
    if rings > bins:
        profile = F.adaptive_avg_pool1d(profile[:, None], bins)[:, 0]
    elif rings < bins:
        profile = F.interpolate(profile[:, None], size=bins, mode="linear", align_corners=True)[:, 0]
    # Remove the overall level: contrast differs between images, the shape carries the signal.
    return profile - profile.mean(dim=1, keepdim=True)


class SpectrumTower(ImageTower):
    """Pixels in [0, 1] (the record's mean 0 / std 1) -> ``bins`` spectral features.

    Takes [B, 3, S, S] RGB crops; the ``tiles`` mode's [B, grid * grid, S, S] gray tiles, whose
    spectra are averaged; or the ``window`` mode's [B, 4, S, S], whose fourth channel marks each
    image's own (top-left) square (images are grouped by that square's side).
    """

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = int(backbone.option("bins", DEFAULT_BINS))
        self.num_layers = 0
        self.hidden_size = 0
        pre = backbone.preprocess
        analysis = {"window": "largest centred square up to {size} px",
                    "tiles": "mean over {grid}x{grid} tiles of {size} px spread over the image",
                    "crop": "{size} px centre crop"}.get(pre.mode, "{size} px after " + pre.mode)
        self.identity = {"model": backbone.name, "family": "spectrum", "revision": SPECTRUM_VERSION,
                         "feature_dim": self.feature_dim, "feature": "radial log power spectrum of the residual",
                         "analysis": analysis.format(size=pre.size, grid=pre.grid) + ", native resolution"}
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # carries device moves

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def to(self, *args, **kwargs):
        kwargs.pop("dtype", None)  # always computed in float32: FFT power spans many decades
        args = tuple(a for a in args if not isinstance(a, torch.dtype))
        return super().to(*args, **kwargs)

    def forward(self, pixel_values: torch.Tensor, layers: bool = False) -> TowerOutput:
        if layers:
            raise ValueError("the spectrum tower has no transformer blocks; --feature_layers needs a ViT tower")
        x = pixel_values.float()
        if x.shape[1] == 3:
            return TowerOutput(embeds=spectral_profile(x.mean(dim=1), self.feature_dim))
        if self.preprocess.mode == "tiles":
            b, tiles = x.shape[:2]
            profiles = spectral_profile(x.flatten(0, 1), self.feature_dim).view(b, tiles, -1)
            return TowerOutput(embeds=profiles.mean(dim=1))
        if self.preprocess.mode != "window" or x.shape[1] != 4:
            raise ValueError(f"spectrum tower: {x.shape[1]}-plane input does not fit {self.preprocess.mode} preprocessing")
        sides = x[:, 3, :, 0].sum(dim=1).round().long()  # valid rows = the square's side
        embeds = x.new_empty(x.shape[0], self.feature_dim)
        for side in sides.unique().tolist():
            group = (sides == side).nonzero().flatten()
            gray = x[group, :3, :side, :side].mean(dim=1)
            embeds[group] = spectral_profile(gray, self.feature_dim)
        return TowerOutput(embeds=embeds)


def load_spectrum_tower(files, backbone: Backbone, identity: dict) -> SpectrumTower:
    return SpectrumTower(backbone)


register(TowerFamily("spectrum", (), load_spectrum_tower, None, feature="radial log power spectrum",
                     weightless=True))
