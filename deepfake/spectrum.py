"""Spectral baseline tower: no weights, the frequency-analysis detector of the GAN literature.

Features are the azimuthally averaged log power spectrum of the image's high-pass
residual (Durall et al., "Watch your up-convolution", 2020): up-sampling layers leave
periodic traces that show up as bumps and lifted tails in this 1-D spectrum. It goes
through the same head, cache, training, evaluation and prediction code as LanguageBind.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepfake.backbones import Backbone
from deepfake.towers import ImageTower, TowerOutput

SPECTRUM_VERSION = "1"


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


class SpectrumTower(ImageTower):
    """Pixels in [0, 1] (the record's mean 0 / std 1) -> ``size // 2`` spectral features."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = backbone.preprocess.size // 2
        self.num_layers = 0
        self.identity = {"model": "spectrum", "family": "spectrum", "revision": SPECTRUM_VERSION,
                         "feature_dim": self.feature_dim}
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
        gray = x.mean(dim=1, keepdim=True)
        residual = highpass_residual(gray)[:, 0]
        window = torch.hann_window(residual.shape[-1], device=x.device)
        window = window[:, None] * window[None, :] if residual.shape[-2] == residual.shape[-1] else 1.0
        spectrum = torch.fft.fftshift(torch.fft.fft2(residual * window), dim=(-2, -1))
        power = torch.log1p(spectrum.abs() ** 2)
        profile = radial_profile(power, self.feature_dim)
        # Remove the overall level: contrast differs between images, the shape carries the signal.
        return TowerOutput(embeds=profile - profile.mean(dim=1, keepdim=True))
