"""One frame in, one full-resolution alpha out: ``alpha, state, stats = matter.matte(frame, state)``.

The temporal state is a value (the previous normalized frame and its alpha), never
hidden in the model: pass ``None`` for a frame that starts a stream (or to switch
temporal reuse off), and the returned state with the next frame of the same stream.

Published behaviour kept here, with the places it breaks handled:

- the prior network sees the frame resized so its short side is 512, each side rounded
  up to a multiple of 32 (bilinear, no antialiasing);
- when more than ``max_pixels`` pixels are active, the cascade refines at 1/4 and 1/2
  scale, each scale's result becoming the next one's prior, and stops at the first
  scale whose band is over budget; the last result is resized bilinearly to full size;
- if even the 1/4 scale is over budget (the published code crashes) the frame is
  refined once at the largest scale whose band fits, found the published rescale way;
- a frame with no active pixel is the composed prior (the published code crashes);
- a previous frame of another size is ignored and the frame starts a new stream.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .model import SparseMat
from .model.backends import make_plan
from .model.lpn import resize_like
from .model.sparse import Sites
from .guided import refine_band
from .sparsity import Masks, compose, sparsity_masks, spatial_band

MAX_PIXELS = 4_000_000
CASCADE_SCALES = (0.25, 0.5, 1.0)
PRIOR_SHORT_SIDE = 512
# The prior network's memory grows with its input's long side (measured on CPU: about 0.3 GB per
# 1024 px). 4096, a frame of up to about 8:1, is nearly three times the widest camera format
# (2.76:1 gives 1440) and costs about 1.3 GB; a 700x3 strip would need 119488 px, tens of GB.
PRIOR_MAX_LONG_SIDE = 4096
MIN_PIXELS = 64


@dataclass(frozen=True)
class MatteState:
    """What the next frame of a stream needs: this frame (normalized, 1x3xHxW) and its alpha (1x1xHxW)."""

    frame: torch.Tensor
    alpha: torch.Tensor

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.frame.shape[2:])


@dataclass
class FrameStats:
    height: int
    width: int
    active_pixels: int = 0  # refined at full resolution (or at the scale the cascade used)
    spatial_pixels: int = 0  # dilated uncertain band
    temporal_pixels: int = 0  # dilated changed pixels; equals the frame without a previous frame
    reused: bool = False  # the previous frame's alpha was kept where nothing changed
    mode: str = "full"  # full | cascade | rescale | guided
    note: str = ""  # why temporal state was dropped, when it was
    ms: dict = field(default_factory=dict)  # per stage: prior, masks, refine, compose
    masks: Masks | None = field(default=None, repr=False)  # full-resolution masks, for previews

    @property
    def active_fraction(self) -> float:
        return self.active_pixels / float(self.height * self.width)


def prior_input_size(height: int, width: int) -> tuple[int, int]:
    """The published rule: short side 512, each side rounded up to a multiple of 32. FrameError when
    the long side would be over ``PRIOR_MAX_LONG_SIDE``."""
    short = min(height, width)
    size = (math.ceil(PRIOR_SHORT_SIDE / short * height / 32) * 32,
            math.ceil(PRIOR_SHORT_SIDE / short * width / 32) * 32)
    if max(size) > PRIOR_MAX_LONG_SIDE:
        raise FrameError(f"the frame is {width}x{height}, too elongated for the prior network, which would see it "
                         f"at {size[1]}x{size[0]}: over {PRIOR_MAX_LONG_SIDE} px on the long side (frames up to "
                         f"about {PRIOR_MAX_LONG_SIDE // PRIOR_SHORT_SIDE}:1 can be matted)")
    return size


class FrameError(ValueError):
    """The frame (or the prior given with it) cannot be matted: it holds NaN or infinite values, or
    its aspect ratio is too extreme for the prior network."""


def non_finite_values(pixels: torch.Tensor) -> str | None:
    """'N NaN/infinite pixel values (first at x=X, y=Y)' for (H, W) or (H, W, C) ``pixels``; None if all are finite."""
    bad = ~torch.isfinite(pixels)
    count = int(bad.sum())
    if count == 0:
        return None
    if bad.dim() == 3:
        bad = bad.any(dim=2)
    # Row-major order, so the first bad pixel is the top-most, then left-most one.
    y, x = divmod(int(torch.argmax(bad.flatten().to(torch.uint8))), bad.shape[1])
    return f"{count} NaN/infinite pixel values (first at x={x}, y={y})"


def _finite_range(values: torch.Tensor, source: torch.Tensor, name: str) -> tuple[float, float]:
    """(min, max) of ``values`` in one pass; NaN reaches both, so a non-finite one raises FrameError
    naming the first bad pixel of ``source`` (what ``values`` were computed from)."""
    low, high = (value.item() for value in torch.aminmax(values))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise FrameError(f"the {name} has {non_finite_values(source)}")
    return low, high


def normalize(frame_rgb: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) float32 RGB, display-encoded -> (1, 3, H, W) BGR in [-1, 1], as the model was trained:
    (x - 0.5) / 0.5 of x clipped to [0, 1], computed as 2x - 1 (the same float32 values).

    The frame is read once and never written: it may be a view of a caller's buffer (the
    engine's shared memory). The range pass that decides whether to clip also rejects NaN and
    infinity, so validating the frame costs no pass of its own. Raises FrameError."""
    height, width = frame_rgb.shape[:2]
    image = torch.empty((1, 3, height, width), dtype=torch.float32, device=frame_rgb.device)
    minus_one = torch.tensor(-1.0, device=frame_rgb.device)
    planes = frame_rgb.permute(2, 0, 1)
    for channel in range(3):  # one plane at a time: much faster than a flip and a strided permute copy
        torch.add(minus_one, planes[2 - channel], alpha=2.0, out=image[0, channel])
    low, high = _finite_range(image, frame_rgb, "frame")
    if low < -1.0 or high > 1.0:
        image.clamp_(-1.0, 1.0)
    return image


def clipped_planes(frame_rgb: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) float32 RGB -> (1, 3, H, W) RGB clipped to [0, 1] (the guided refiner's guide), one
    plane at a time: half the time of a clip followed by a strided permute copy at 4K."""
    planes = frame_rgb.permute(2, 0, 1)
    out = torch.empty((1, 3, *frame_rgb.shape[:2]), dtype=torch.float32, device=frame_rgb.device)
    for channel in range(3):
        torch.clamp(planes[channel], 0.0, 1.0, out=out[0, channel])
    return out


def checked_prior(prior: torch.Tensor) -> torch.Tensor:
    """A given coarse alpha (h, w) clipped to [0, 1] as a new tensor; NaN or infinity raise FrameError.
    Checked here, among the frame's first operations, rather than by each caller."""
    _finite_range(prior, prior, "prior")
    return prior.clamp(0, 1)


class Matter:
    """``model`` None: the weight-free guided refiner, which needs a prior with every frame; it
    keeps the same band and temporal rules, and its cost follows the band, so it has no cascade."""

    def __init__(self, model: SparseMat | None, device: str | torch.device = "cpu", max_pixels: int = MAX_PIXELS,
                 backend: str = "torch", half: bool = False):
        if max_pixels < MIN_PIXELS:
            raise ValueError(f"max_pixels must be at least {MIN_PIXELS} (one 8 x 8 tile)")
        self.device = torch.device(device)
        self.dtype = torch.float16 if half else torch.float32
        self.model = None if model is None else model.to(self.device, self.dtype).eval()
        self.max_pixels = max_pixels
        self.backend = backend

    def with_budget(self, max_pixels: int | None) -> "Matter":
        """The same model with another ``max_pixels`` (None keeps this one's)."""
        if max_pixels is None or max_pixels == self.max_pixels:
            return self
        return Matter(self.model, self.device, max_pixels, self.backend, self.dtype == torch.float16)

    @contextmanager
    def _stage(self, stats: FrameStats, name: str):
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        stats.ms[name] = stats.ms.get(name, 0.0) + (time.perf_counter() - start) * 1000.0

    @torch.no_grad()
    def matte(self, frame_rgb: torch.Tensor, state: MatteState | None = None, prior: torch.Tensor | None = None,
              out: torch.Tensor | None = None) -> tuple[torch.Tensor, MatteState, FrameStats]:
        """``frame_rgb``: (H, W, 3) float RGB, display-encoded; values outside [0, 1] are clipped, NaN or
        infinity raise FrameError. It is only read, never kept. Returns alpha (H, W) float32.

        ``prior``: an optional coarse alpha (h, w) at any resolution; it replaces the prior
        network's alpha (band and refiner input), the network still supplies the context.
        Clipped to [0, 1]; NaN or infinity raise FrameError.
        Required without a model.

        ``out``: an optional (H, W) float32 tensor on the device to write the alpha into (it may
        hold ``state``'s alpha); the returned alpha and the state's are then ``out`` itself, so
        the state is only valid while ``out`` keeps those values.
        """
        if self.model is None and prior is None:
            raise ValueError("the guided refiner (no checkpoint) needs a prior alpha for every frame")
        height, width = frame_rgb.shape[:2]
        stats = FrameStats(height, width)
        if state is not None and state.size != (height, width):
            stats.note = f"frame size {width}x{height} differs from the previous {state.size[1]}x{state.size[0]}: new stream"
            state = None
        image = normalize(frame_rgb.to(self.device, torch.float32))

        with self._stage(stats, "prior"):
            prior_lr, context = self._prior(image) if self.model is not None else (None, None)
            if prior is not None:
                prior_lr = checked_prior(prior.to(self.device, torch.float32))[None, None]
            prior = resize_like(prior_lr, image)
        with self._stage(stats, "masks"):
            masks = sparsity_masks(prior, image, None if state is None else state.frame)
            n_active = int(masks.refine.sum().item())
            stats.spatial_pixels = int(masks.band.sum().item())
            stats.temporal_pixels = height * width if masks.changed is None else int(masks.changed.sum().item())
            stats.masks = masks

        if n_active <= self.max_pixels or self.model is None:
            stats.active_pixels = n_active
            stats.reused = state is not None
            with self._stage(stats, "refine"):
                if self.model is None:
                    stats.mode = "guided"
                    refined = refine_band(clipped_planes(frame_rgb.to(self.device, torch.float32)), prior, masks.refine)
                else:
                    refined = self._refine(image, prior, masks.refine, context)
            with self._stage(stats, "compose"):
                alpha = compose(refined, masks, prior, None if state is None else state.alpha,
                                out=None if out is None else out[None, None])
        else:  # the cascade computes the frame afresh: nothing of the previous frame is reused
            alpha = self._over_budget(image, prior_lr, context, n_active, stats)
            if out is not None:
                alpha = out[None, None].copy_(alpha)
        return alpha[0, 0], MatteState(image, alpha), stats

    def _prior(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        small = F.interpolate(image, size=prior_input_size(*image.shape[2:]), mode="bilinear", align_corners=False)
        prior, context = self.model.lpn(small.to(self.dtype))
        return prior.float(), context.float()

    def _refine(self, image, prior, mask, context) -> torch.Tensor:
        """Dense refined alpha, valid where ``mask`` is set (zero elsewhere)."""
        sites = Sites.from_mask(mask[0, 0] > 0)
        if sites.count == 0:
            return torch.zeros_like(prior)
        y, x = sites.coords[:, 0], sites.coords[:, 1]
        inputs = torch.cat([image[0, :, y, x], (prior[0, :, y, x] - 0.5) / 0.5]).T.contiguous()
        plan = make_plan(self.backend, sites)
        alpha = self.model.shm(inputs.to(self.dtype), plan, context.to(self.dtype), prior.to(self.dtype))
        return sites.scatter(alpha.float())[None, None]

    def _refine_scaled(self, image, prior_lr, context, size=None, scale=None):
        """Refine the band at a reduced size (no temporal reuse): the composed alpha and its band size."""
        scaled = F.interpolate(image, size=size, scale_factor=scale, mode="bilinear", align_corners=False)
        prior = resize_like(prior_lr, scaled)
        band = spatial_band(prior)
        n_band = int(band.sum().item())
        if n_band > self.max_pixels:
            return None, n_band
        masks = Masks(band, band, None, None)
        return compose(self._refine(scaled, prior, band, context), masks, prior, None), n_band

    def _over_budget(self, image, prior_lr, context, n_active, stats) -> torch.Tensor:
        height, width = image.shape[2:]
        result = None
        with self._stage(stats, "refine"):
            stats.mode = "cascade"
            current = prior_lr
            for scale in CASCADE_SCALES:
                composed, n_band = self._refine_scaled(image, current, context, scale=scale)
                if composed is None:
                    break
                current = result = composed
                stats.active_pixels = n_band
            if result is None:
                stats.mode = "rescale"
                result, stats.active_pixels = self._rescale(image, prior_lr, context, n_active)
        with self._stage(stats, "compose"):
            return F.interpolate(result, size=(height, width), mode="bilinear", align_corners=False)

    def _rescale(self, image, prior_lr, context, n_active):
        """The published rescale: shrink by sqrt(budget / active), sides to multiples of 8; shrink
        again while the band (fixed in pixels, so relatively wider) is still over budget."""
        height, width = image.shape[2:]
        scale = math.sqrt(self.max_pixels / float(n_active))
        while True:
            size = (max(8, math.ceil(int(scale * height) / 8) * 8), max(8, math.ceil(int(scale * width) / 8) * 8))
            composed, n_band = self._refine_scaled(image, prior_lr, context, size=size)
            if composed is not None:  # always by 8 x 8, since max_pixels >= MIN_PIXELS
                return composed, n_band
            scale *= 0.9 * math.sqrt(self.max_pixels / float(n_band))
