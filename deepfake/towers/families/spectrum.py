"""Spectral baseline tower: no weights, the frequency-analysis detector of the GAN literature.

Features are the azimuthally averaged log power spectrum of the image's high-pass
residual (Durall et al., "Watch your up-convolution", 2020): up-sampling layers leave
periodic traces that show up as bumps and lifted tails in this 1-D spectrum. It goes
through the same head, cache, training, evaluation and prediction code as LanguageBind.

What is analysed is the record's preprocessing, always at native resolution, over 4 x 4 tiles
of 256 px spread evenly over the whole image by default, whose spectra are averaged (Welch's
method): a 256 px centre crop of a 1024 px photo keeps 6% of its pixels, the tiles all of them.
The default (``--model spectrum``, = ``spectrum-colour``) reads the tiles in colour
(:func:`colour_profile`: the gray, R-G and B-G residuals' log ring power and the R/G, B/G
coherence, 5 x ``bins`` features). On four public sets of real photos and generated images
(``benchmarks/spectral_real_photos.py``; docs/towers.md, "The spectral baseline on real
photographs") colour had the best validation AP on three and the best mean; every gray analysis
stayed near chance. The gray analyses (``bins`` features) are records of their own:
``spectrum-tiles256`` (the same tiles, gray: the default before colour, the demo's tower),
``spectrum-tiles512`` (2 x 2 tiles of 512 px), ``spectrum-crop256`` (a centre crop),
``spectrum-window512`` and ``spectrum-window1024`` (one periodogram of the largest centred square
up to 512 or 1024 px); on the photo-sized synthetic benchmark the tiles gave the highest AP
(``tests/test_synthetic.py`` asserts it against the crop). Whatever the window, each profile is
sampled at ``bins`` rings between DC and Nyquist, so every analysis gives its feature size.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from deepfake.towers.backbones import Backbone
from deepfake.towers.base import ImageTower, TowerOutput
from deepfake.towers.registry import TowerFamily, register

DEFAULT_BINS = 128
GRAY_FEATURE = "radial log power spectrum of the residual"
COLOUR_FEATURE = "log radial power of the gray, R-G and B-G residuals; R/G and B/G coherence; DC dropped"
# The version of each analysis's features, recorded as the tower's revision (and so in the cache key and beside
# every head): change it when the features change beyond float rounding. The colour definition changed three
# times under version 1; version 2 is its present one, which gray's never left.
SPECTRUM_VERSION = "2"
FEATURE_VERSIONS = {GRAY_FEATURE: "1", COLOUR_FEATURE: SPECTRUM_VERSION}
# Recorded as version 1 since e6a64aa with the present colour features: heads made then still load.
EARLIER_VERSIONS = {COLOUR_FEATURE: ("1",)}
# Colour definitions this code no longer computes, as heads recorded them (version 1), and the commits that made
# each (a..b: from a up to, not including, b).
RETIRED_FEATURES = {
    "radial log power spectra of the gray, R-G and B-G residuals; R/G and B/G coherence": "b9eb40e..8d3d4b3",
    "log radial power of the gray, R-G and B-G residuals; R/G and B/G coherence": "8d3d4b3..69c92b5",
    "log radial power (DC dropped) of the gray, R-G and B-G residuals; R/G and B/G coherence": "69c92b5..e6a64aa",
}
RELATIVE_FLOOR = 1e-4  # added to a ring's mean power before its log, times the mean ring power (40 dB down)
POWER_FLOOR = 1e-12  # the floor's own floor, for planes without power (pixels in [0, 1])
# Pixels analysed at once: tiles (or windows) go through the FFT in chunks of about this many
# pixels (8 tiles of 256 px), so the working set is a few times 2 MB, in cache, whatever the batch,
# the tile size or the grid (measured fastest on 2 cores: 0.49 ms a tile, 0.76 ms in chunks of 64).
CHUNK_PIXELS = 1 << 19


def _sum3(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of each element and its two neighbours along ``dim``, reflected at the ends (no padded copy)."""
    n = x.shape[dim]
    out = torch.empty_like(x)
    if n >= 3:
        inner = out.narrow(dim, 1, n - 2)
        torch.add(x.narrow(dim, 0, n - 2), x.narrow(dim, 1, n - 2), out=inner)
        inner.add_(x.narrow(dim, 2, n - 2))
    if n >= 2:  # reflection: the neighbour beyond an end is the one inside it
        out.select(dim, 0).copy_(x.select(dim, 1)).mul_(2).add_(x.select(dim, 0))
        out.select(dim, -1).copy_(x.select(dim, -2)).mul_(2).add_(x.select(dim, -1))
    else:
        out.copy_(x).mul_(3)
    return out


def highpass_residual(gray: torch.Tensor) -> torch.Tensor:
    """[N, H, W] image minus its 3x3 local mean (reflected at the borders): the fine structure where
    up-sampling traces live. The 3x3 sum is a sum of three rows, then of three columns."""
    box = _sum3(_sum3(gray, 1), 2).div_(9.0)
    return torch.sub(gray, box, out=box)


@functools.lru_cache(maxsize=32)
def _half_plane_rings(h: int, w: int, rings: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ring geometry of an ``h`` x ``w`` spectrum read from its real-FFT half plane [h, w // 2 + 1].

    Returns each half-plane frequency's ring (``rings``: the corners beyond Nyquist), its weight
    (2 for a column that also stands for its mirror image, the power spectrum of a real image
    being symmetric, else 1) and the pixel count of each ring over the full plane. Rings are
    those of the full, centred spectrum: ``rings`` of equal width between DC and Nyquist.
    """
    ys = torch.arange(h, dtype=torch.float32) - h // 2
    xs = torch.arange(w, dtype=torch.float32) - w // 2
    radius = torch.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2) / (min(h, w) / 2)
    full = torch.clamp((radius * rings).long(), max=rings)  # centred (fftshift) layout
    counts = torch.bincount(full.flatten(), minlength=rings + 1).clamp(min=1)
    # Unshifted row r and half-plane column c sit at ((r + h // 2) % h, (c + w // 2) % w) of the centred plane.
    rows = (torch.arange(h) + h // 2) % h
    cols = (torch.arange(w // 2 + 1) + w // 2) % w
    ring = full[rows][:, cols].flatten()
    weight = torch.full((w // 2 + 1,), 2.0)
    weight[0] = 1.0
    if w % 2 == 0:
        weight[-1] = 1.0  # the Nyquist column has no mirror image
    return ring, weight.repeat(h), counts


@functools.lru_cache(maxsize=32)
def _hann_2d(side: int) -> torch.Tensor:
    return torch.hann_window(side)[None, :] * torch.hann_window(side)[:, None]


def _ring_profile(values: torch.Tensor, h: int, w: int, bins: int) -> torch.Tensor:
    """[n, h * (w // 2 + 1)] half-plane values (scaled in place) -> [n, bins]: their mean over each ring.

    Rings are one frequency step wide (``min(h, w) // 2`` of them), then averaged (or, for a
    window narrower than ``2 * bins``, interpolated) down to ``bins``.
    """
    n = values.shape[0]
    rings = max(1, min(h, w) // 2)
    ring, weight, counts = _half_plane_rings(h, w, rings)
    sums = values.new_zeros(n, rings + 1).scatter_add_(1, ring.expand(n, -1), values.mul_(weight))
    profile = (sums / counts)[:, :rings]
    if rings > bins:
        profile = F.adaptive_avg_pool1d(profile[:, None], bins)[:, 0]
    elif rings < bins:
        profile = F.interpolate(profile[:, None], size=bins, mode="linear", align_corners=True)[:, 0]
    return profile


def _residual_spectrum(planes: torch.Tensor) -> torch.Tensor:
    """[N, H, W] planes -> the real FFT's half plane of their (Hann-windowed, if square) high-pass residual."""
    residual = highpass_residual(planes)
    h, w = residual.shape[-2:]
    if h == w:
        residual *= _hann_2d(h)
    return torch.fft.rfft2(residual)


def _power(spectrum: torch.Tensor) -> torch.Tensor:
    return spectrum.real.square().addcmul_(spectrum.imag, spectrum.imag)


def _log_power_profile(spectrum: torch.Tensor, h: int, w: int, bins: int) -> torch.Tensor:
    """Radial log power of a half-plane spectrum [n, h, w // 2 + 1], its overall level removed."""
    profile = _ring_profile(_power(spectrum).log1p_().view(len(spectrum), -1), h, w, bins)
    # Remove the overall level: contrast differs between images, the shape carries the signal.
    return profile - profile.mean(dim=1, keepdim=True)


def _profile(gray: torch.Tensor, bins: int) -> torch.Tensor:
    """:func:`spectral_profile` of one chunk, all at once."""
    h, w = gray.shape[-2:]
    return _log_power_profile(_residual_spectrum(gray), h, w, bins)


def _coherence(a: torch.Tensor, b: torch.Tensor, h: int, w: int, bins: int) -> torch.Tensor:
    """Per ring, the real part of the cross-spectrum of ``a`` and ``b`` over the root of their powers:
    1 where two colour planes carry the same fine structure, lower where they differ."""
    n = len(a)
    cross = _ring_profile(a.real.mul(b.real).addcmul_(a.imag, b.imag).view(n, -1), h, w, bins).double()
    power = _ring_profile(_power(a).view(n, -1), h, w, bins).double() * _ring_profile(_power(b).view(n, -1), h, w, bins)
    # In float64: the product of two faint rings (a flat or transparent region) underflows float32.
    # A ring without power in either plane has no coherence to speak of: 0. Bounded by Cauchy-Schwarz.
    coherence = torch.where(power > 0, cross / power.sqrt(), torch.zeros_like(cross))
    return coherence.clamp_(-1.0, 1.0).float()


def _log_ring_power(spectrum: torch.Tensor, h: int, w: int, bins: int) -> torch.Tensor:
    """The log of each ring's mean power (a periodogram's radial estimate), its overall level removed.

    The log comes after the ring mean: ``log1p`` of each frequency's power, as the gray profile
    takes it, is nearly linear in the faint high frequencies of [0, 1] pixels, where the colour
    planes' differences lie. A floor of :data:`RELATIVE_FLOOR` times the mean ring power (at least
    :data:`POWER_FLOOR`) bounds the dynamic range: rings the high-pass left without power (the DC
    ring, a flat tile's every ring) would otherwise give the log of float rounding.
    """
    power = _ring_profile(_power(spectrum).view(len(spectrum), -1), h, w, bins).clamp_min_(0)
    floor = power.mean(dim=1, keepdim=True).mul_(RELATIVE_FLOOR).clamp_min_(POWER_FLOOR)
    profile = power.add_(floor).log_()
    return profile - profile.mean(dim=1, keepdim=True)


def _colour_profile(rgb: torch.Tensor, bins: int) -> torch.Tensor:
    """[N, 3, H, W] RGB planes -> [N, 5 * bins]: see :func:`colour_profile`."""
    n, _, h, w = rgb.shape
    spectra = _residual_spectrum(rgb.flatten(0, 1)).view(n, 3, h, -1)
    # The DC term is what the high-pass removed, up to float rounding that a log or a ratio would magnify.
    spectra[:, :, 0, 0] = 0
    red, green, blue = spectra.unbind(1)
    return torch.cat([
        # The FFT is linear: the spectrum of the gray plane's residual is the mean of the three.
        _log_ring_power(red.add(green).add_(blue).div_(3), h, w, bins),
        _log_ring_power(red - green, h, w, bins),
        _log_ring_power(blue - green, h, w, bins),
        _coherence(red, green, h, w, bins),
        _coherence(blue, green, h, w, bins),
    ], dim=1)


def _chunks(n: int, plane_pixels: int) -> range:
    return range(0, n, max(1, CHUNK_PIXELS // max(1, plane_pixels)))


def spectral_profile(gray: torch.Tensor, bins: int) -> torch.Tensor:
    """[N, H, W] gray images -> [N, bins] radial log power spectrum of the high-pass residual.

    Rings are one frequency step wide (``min(H, W) // 2`` of them), then averaged (or, for a
    window narrower than ``2 * bins``, interpolated) down to ``bins``, so the feature means the
    same frequencies for every window size. Square inputs get a 2-D Hann window. The images go
    through in chunks of :data:`CHUNK_PIXELS`; each uses the real FFT's half plane, which holds
    the whole power spectrum of a real image.
    """
    gray = gray.float()
    if not len(gray):
        return gray.new_zeros(0, bins)
    step = _chunks(len(gray), gray.shape[-1] * gray.shape[-2]).step
    return torch.cat([_profile(gray[i : i + step], bins) for i in range(0, len(gray), step)])


def colour_profile(rgb: torch.Tensor, bins: int) -> torch.Tensor:
    """[N, 3, H, W] RGB images -> [N, 5 * bins]: the colour planes' residual spectra.

    Five radial profiles of the high-pass residual, each ``bins`` long: the log of the ring-mean
    power of the gray plane, of the R - G and of the B - G opponent planes, and the coherence of
    R with G and of B with G. A camera's demosaicing and a generator's decoder
    leave different colour structure at fine scales, which the gray plane averages away.
    """
    rgb = rgb.float()
    if not len(rgb):
        return rgb.new_zeros(0, 5 * bins)
    step = _chunks(len(rgb), 3 * rgb.shape[-1] * rgb.shape[-2]).step
    return torch.cat([_colour_profile(rgb[i : i + step], bins) for i in range(0, len(rgb), step)])


def tile_mean_profile(tiles: torch.Tensor, bins: int, colour: bool = False) -> torch.Tensor:
    """[B, T, S, S] gray tiles ([B, T * 3, S, S] RGB ones with ``colour``) -> each image's mean tile profile
    (Welch's method), chunk by chunk: [B, bins] ([B, 5 * bins] with ``colour``)."""
    b, planes, s1, s2 = tiles.shape
    channels = 3 if colour else 1
    t = planes // channels
    flat = tiles.reshape(b * t, channels, s1, s2) if colour else tiles.flatten(0, 1)
    profile = _colour_profile if colour else _profile
    step = _chunks(b * t, channels * s1 * s2).step
    owner = torch.arange(b).repeat_interleave(t)
    sums = tiles.new_zeros(b, bins * (5 if colour else 1), dtype=torch.float32)
    for i in range(0, b * t, step):
        sums.index_add_(0, owner[i : i + step], profile(flat[i : i + step].float(), bins))
    return sums / t


class SpectrumTower(ImageTower):
    """Pixels in [0, 1] (the record's mean 0 / std 1) -> ``bins`` spectral features (``5 * bins`` in colour).

    Takes [B, 3, S, S] RGB crops; the ``tiles`` mode's [B, grid * grid, S, S] gray tiles (or
    [B, grid * grid * 3, S, S] RGB ones, for :func:`colour_profile`), whose spectra are averaged;
    or the ``window`` mode's [B, 2, S, S], a gray plane and a plane marking each image's own
    (top-left) square (images are grouped by that square's side). Whatever the
    batch, the FFT sees :data:`CHUNK_PIXELS` pixels at a time.
    """

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone
        self.bins = int(backbone.option("bins", DEFAULT_BINS))
        self.num_layers = 0
        self.hidden_size = 0
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # carries device moves

    # Read from the preprocessing, not fixed at construction: a checkpoint swaps in the preprocessing
    # its head was trained with (a run recorded as ``spectrum`` before that name took colour is gray).
    @property
    def colour(self) -> bool:
        return self.preprocess.colour

    @property
    def feature_dim(self) -> int:
        return self.bins * (5 if self.colour else 1)

    @property
    def identity(self) -> dict:
        pre = self.preprocess
        analysis = {"window": "largest centred square up to {size} px",
                    "tiles": "mean over {grid}x{grid} tiles of {size} px spread over the image",
                    "crop": "{size} px centre crop"}.get(pre.mode, "{size} px after " + pre.mode)
        feature = COLOUR_FEATURE if self.colour else GRAY_FEATURE
        return {"model": self.backbone.name, "family": "spectrum", "revision": FEATURE_VERSIONS[feature],
                "feature_dim": self.feature_dim, "feature": feature,
                "analysis": analysis.format(size=pre.size, grid=pre.grid) + ", native resolution"}

    def recorded_problem(self, recorded: dict) -> str | None:
        """A spectral head's recorded feature definition and version must be what this code computes: the
        colour features changed under one version, and a head on earlier ones would read other numbers."""
        if recorded.get("family") != "spectrum":
            return super().recorded_problem(recorded)
        # A record without the definition is from before colour existed: gray.
        feature, version = recorded.get("feature") or GRAY_FEATURE, str(recorded.get("revision"))
        computes, own = self.identity["feature"], self.identity["revision"]
        if feature in RETIRED_FEATURES:
            return (f"the head was trained on spectral features this version no longer computes: {feature!r} "
                    f"(spectrum version {version}, made by commits {RETIRED_FEATURES[feature]}); they are now "
                    f"{computes!r} (version {own}): train the head again (the features are recomputed)")
        if feature != computes or version not in (own, *EARLIER_VERSIONS.get(feature, ())):
            return (f"the head was trained on spectral features {feature!r} (spectrum version {version}), "
                    f"but this {recorded.get('model')!r} analysis computes {computes!r} (version {own}): "
                    "train the head again, or load it with the version of deepfake that made it")
        return None

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
        x, bins = pixel_values, self.bins
        if x.shape[1] == 3:  # RGB crops (the crop mode, predict --tiles) or colour tiles of a 1 x 1 grid
            if self.colour:
                return TowerOutput(embeds=colour_profile(x, bins))
            return TowerOutput(embeds=spectral_profile(x.float().mean(dim=1), bins))
        if self.preprocess.mode == "tiles":
            return TowerOutput(embeds=tile_mean_profile(x, bins, self.colour))
        if self.preprocess.mode != "window" or x.shape[1] != 2:
            raise ValueError(f"spectrum tower: {x.shape[1]}-plane input does not fit {self.preprocess.mode} preprocessing")
        sides = x[:, 1, :, 0].float().sum(dim=1).round().long()  # valid rows = the square's side
        embeds = x.new_empty(x.shape[0], self.feature_dim, dtype=torch.float32)
        for side in sides.unique().tolist():
            group = (sides == side).nonzero().flatten()
            embeds[group] = spectral_profile(x[group, 0, :side, :side], bins)
        return TowerOutput(embeds=embeds)


def load_spectrum_tower(files, backbone: Backbone, identity: dict) -> SpectrumTower:
    return SpectrumTower(backbone)


register(TowerFamily("spectrum", (), load_spectrum_tower, None, feature="radial log power spectrum",
                     weightless=True))
