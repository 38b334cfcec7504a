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

from .clean_plate import clean_plate_prior
from .foreground import premultiplied_foreground
from .guided import refine_band
from .model import SparseMat
from .model.backends import make_plan
from .model.lpn import resize_like
from .sparsity import Masks, Trimap, compose, sparsity_masks, spatial_band
from .validation import (MAX_PIXELS, MAX_TRIMAP_DILATION, MIN_PIXELS, FrameError, non_finite_values,
                         prior_input_size, trimap_size_problem)

CASCADE_SCALES = (0.25, 0.5, 1.0)


@dataclass(frozen=True)
class MatteState:
    """What the next frame of a stream needs: this frame (normalized, 1x3xHxW) and its alpha (1x1xHxW)."""

    frame: torch.Tensor
    alpha: torch.Tensor

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.frame.shape[2:])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.frame, self.alpha))


@dataclass
class FrameStats:
    height: int
    width: int
    active_pixels: int = 0  # refined at full resolution (or at the scale the cascade used)
    spatial_pixels: int = 0  # dilated uncertain band
    temporal_pixels: int = 0  # dilated changed pixels; equals the frame without a previous frame
    continued: bool = False  # the frame was given its stream's previous state
    reused: bool = False  # the previous frame's alpha was kept where nothing changed
    mode: str = "full"  # full | cascade | rescale | guided
    note: str = ""  # why temporal state was dropped, when it was
    ms: dict = field(default_factory=dict)  # per stage: prior, masks, refine, compose
    masks: Masks | None = field(default=None, repr=False)  # full-resolution masks, for previews
    foreground: object = field(default=None, repr=False)  # (H, W, 4) premultiplied RGBA, when asked for

    @property
    def active_fraction(self) -> float:
        return self.active_pixels / float(self.height * self.width)


def _finite_range(values: torch.Tensor, source: torch.Tensor, name: str) -> tuple[float, float]:
    """(min, max) of ``values`` in one pass; NaN reaches both, so a non-finite one raises FrameError
    naming the first bad pixel of ``source`` (what ``values`` were computed from). Values that
    overflowed from huge finite ones (3e38 doubled) are infinite but not an error: they clip."""
    low, high = torch.stack(torch.aminmax(values)).tolist()  # one host synchronisation for both
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = non_finite_values(source.cpu().numpy())
        if bad is not None:
            raise FrameError(f"the {name} has {bad}")
    return low, high


def site_inputs(image: torch.Tensor, prior: torch.Tensor, sites) -> torch.Tensor:
    """The refiner's (N, 4) input at each site: the normalized BGR image and the prior in [-1, 1]."""
    y, x = sites.coords[:, 0], sites.coords[:, 1]
    return torch.cat([image[0, :, y, x], (prior[0, :, y, x] - 0.5) / 0.5]).T.contiguous()


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


def checked_prior(prior: torch.Tensor, name: str = "prior") -> torch.Tensor:
    """A given coarse alpha (h, w) clipped to [0, 1] as a new tensor; NaN or infinity raise FrameError.
    Checked here, among the frame's first operations, rather than by each caller."""
    _finite_range(prior, prior, name)
    return prior.clamp(0, 1)


def checked_clean_plate(plate: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A given clean plate (H, W, 3) of the frame's ``size``; FrameError for another size, NaN or infinity."""
    if tuple(plate.shape[:2]) != size:
        raise FrameError(f"the clean plate is {plate.shape[1]}x{plate.shape[0]}, the frame {size[1]}x{size[0]}: a clean "
                         f"plate must be the frame's size")
    _finite_range(plate, plate, "clean plate")
    return plate


def checked_trimap(trimap: torch.Tensor, size: tuple[int, int], dilation: int) -> Trimap:
    """A given trimap (h, w) at the frame's ``size``; FrameError for NaN, infinity or another aspect."""
    problem = trimap_size_problem(tuple(trimap.shape), size)
    if problem is not None:
        raise FrameError(problem)
    return Trimap.at_size(checked_prior(trimap, "trimap"), size, dilation)


class Matter:
    """``model`` None: the weight-free guided refiner, which needs a prior (or a trimap or a clean
    plate) with every frame; it keeps the same band and temporal rules, and its cost follows the
    band, so it has no cascade.
    Holds no temporal state: that is the caller's value (see the module's docstring)."""

    def __init__(self, model: SparseMat | None, device: str | torch.device = "cpu", max_pixels: int = MAX_PIXELS,
                 backend: str = "torch", half: bool = False):
        self.device = torch.device(device)
        self.dtype = torch.float16 if half else torch.float32
        self.model = None if model is None else model.to(self.device, self.dtype).eval()
        self.max_pixels = _checked_budget(max_pixels)
        self.backend = backend
        self._staging: torch.Tensor | None = None  # pinned host copy of the last frame (CUDA only)

    @contextmanager
    def _stage(self, stats: FrameStats, name: str, events: list):
        """Time a stage: by the wall clock on CPU; on CUDA by events on the stream, read once the
        frame is done (``_read_events``), so timing adds no wait of its own between stages."""
        if self.device.type != "cuda":
            start = time.perf_counter()
            yield
            stats.ms[name] = stats.ms.get(name, 0.0) + (time.perf_counter() - start) * 1000.0
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        events.append((name, start, end))

    @staticmethod
    def _read_events(stats: FrameStats, events: list) -> None:
        if events:
            events[-1][2].synchronize()  # the frame's one wait: its alpha is copied to the host next anyway
        for name, start, end in events:
            stats.ms[name] = stats.ms.get(name, 0.0) + start.elapsed_time(end)

    def _to_device(self, frame_rgb: torch.Tensor) -> torch.Tensor:
        """The frame as float32 on the device. To CUDA from the host: through a pinned staging buffer
        the Matter reuses, copied without blocking; the buffer is written again only by the next
        call, after this one's frame has been waited for (``_read_events``)."""
        if self.device.type != "cuda" or frame_rgb.device.type != "cpu":
            return frame_rgb.to(self.device, torch.float32)
        if self._staging is None or self._staging.shape != frame_rgb.shape:
            self._staging = torch.empty(frame_rgb.shape, dtype=torch.float32, pin_memory=True)
        self._staging.copy_(frame_rgb)
        return self._staging.to(self.device, non_blocking=True)

    @torch.no_grad()
    def matte(self, frame_rgb: torch.Tensor, state: MatteState | None = None, prior: torch.Tensor | None = None,
              trimap: torch.Tensor | None = None, trimap_dilation: int = 0, clean_plate: torch.Tensor | None = None,
              max_pixels: int | None = None) -> tuple[torch.Tensor, MatteState, FrameStats]:
        """``frame_rgb``: (H, W, 3) float RGB, display-encoded; values outside [0, 1] are clipped, NaN or
        infinity raise FrameError. It is only read, never kept. Returns alpha (H, W) float32, the
        state to pass with the stream's next frame, and the frame's stats.

        ``prior``: an optional coarse alpha (h, w) at any resolution; it replaces the prior
        network's alpha (band and refiner input), the network still supplies the context.
        Clipped to [0, 1]; NaN or infinity raise FrameError. Without a model, a prior or a trimap
        is required.

        ``trimap``: an optional (h, w) trimap at any resolution of the frame's aspect (0 background,
        1 foreground, anything between unknown; resized by the nearest pixel): the band is its
        unknown region dilated by ``trimap_dilation`` pixels, and its known pixels are exactly 0
        or 1 in the alpha. Without a prior and a model it is the guided refiner's prior.

        ``clean_plate``: an optional (H, W, 3) picture of the shot without the subject, encoded as
        ``frame_rgb`` is: the prior then comes from the frame's colour distance to it
        (``clean_plate.py``), in place of the network's; not with ``prior``. FrameError for another
        size, NaN or infinity; a plate that does not seem to be the shot's is said in ``stats.note``.

        ``max_pixels``: this frame's refinement budget (default: the Matter's).
        """
        if self.model is None and prior is None and trimap is None and clean_plate is None:
            raise ValueError("the guided refiner (no checkpoint) needs a prior alpha, a trimap or a clean plate for "
                             "every frame")
        if prior is not None and clean_plate is not None:
            raise ValueError("a prior and a clean plate both replace the network's prior: give one")
        if not 0 <= trimap_dilation <= MAX_TRIMAP_DILATION:
            raise ValueError(f"trimap_dilation must be 0 to {MAX_TRIMAP_DILATION} pixels, got {trimap_dilation}")
        budget = self.max_pixels if max_pixels is None else _checked_budget(max_pixels)
        height, width = frame_rgb.shape[:2]
        prior_input = prior_input_size(height, width)  # every model refuses what the prior network cannot take
        stats = FrameStats(height, width, continued=state is not None)
        if state is not None and state.size != (height, width):
            stats.note = f"frame size {width}x{height} differs from the previous {state.size[1]}x{state.size[0]}: new stream"
            state = None
        frame = self._to_device(frame_rgb)
        image = normalize(frame)
        if trimap is not None:
            trimap = checked_trimap(trimap.to(self.device, torch.float32), (height, width), trimap_dilation)
        if clean_plate is not None:
            clean_plate = checked_clean_plate(clean_plate.to(self.device, torch.float32), (height, width))
        events: list = []

        with self._stage(stats, "prior", events):
            prior_lr, context = self._prior(image, prior_input) if self.model is not None else (None, None)
            if prior is not None:
                prior_lr = checked_prior(prior.to(self.device, torch.float32))[None, None]
            elif clean_plate is not None:
                prior_lr, plate_note = clean_plate_prior(frame, clean_plate, prior_input)
                stats.note = "; ".join(note for note in (stats.note, plate_note) if note)
            elif prior_lr is None:  # the guided refiner's prior from the trimap: known 0 and 1, unknown between
                prior_lr = trimap.fix(torch.full_like(trimap.unknown, 0.5))
            prior = resize_like(prior_lr, image)
            if trimap is not None:  # the refiner sees the known pixels as they will be
                prior = trimap.fix(prior)
        with self._stage(stats, "masks", events):
            masks = sparsity_masks(prior, image, None if state is None else state.frame, trimap)
            counted = [masks.refine, masks.band] + ([] if masks.changed is None else [masks.changed])
            sums = torch.stack([torch.count_nonzero(m) for m in counted]).tolist()  # one synchronisation, exact
            n_active, stats.spatial_pixels, *changed = (int(n) for n in sums)
            stats.temporal_pixels = changed[0] if changed else height * width
            stats.masks = masks

        if n_active <= budget or self.model is None:
            stats.active_pixels = n_active
            stats.reused = state is not None
            with self._stage(stats, "refine", events):
                if self.model is None:
                    stats.mode = "guided"
                    refined = refine_band(clipped_planes(frame), prior, masks.refine)
                else:
                    refined = self._refine(image, prior, masks.refine, context)
            with self._stage(stats, "compose", events):
                alpha = compose(refined, masks, prior, None if state is None else state.alpha, trimap)
        else:  # the cascade computes the frame afresh: nothing of the previous frame is reused
            alpha = self._over_budget(image, prior_lr, context, n_active, budget, stats, events, trimap)
        self._read_events(stats, events)
        return alpha[0, 0], MatteState(image, alpha), stats

    def _prior(self, image: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        small = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        prior, context = self.model.lpn(small.to(self.dtype))
        return prior.float(), context.float()

    def _refine(self, image, prior, mask, context) -> torch.Tensor:
        """Dense refined alpha, valid where ``mask`` is set (zero elsewhere)."""
        plan = make_plan(self.backend, mask[0, 0] > 0, self.model.shm.rules)
        sites = plan.sites
        if sites.count == 0:
            return torch.zeros_like(prior)
        inputs = site_inputs(image, prior, sites)
        with plan.running():
            alpha = self.model.shm(inputs.to(self.dtype), plan, context.to(self.dtype), prior.to(self.dtype))
        return sites.scatter(alpha.float())[None, None]

    def _refine_scaled(self, image, prior_lr, context, budget, trimap, size=None, scale=None):
        """Refine the band at a reduced size (no temporal reuse): the composed alpha and its band
        size, or None and the band size when the band is over ``budget``."""
        scaled = F.interpolate(image, size=size, scale_factor=scale, mode="bilinear", align_corners=False)
        prior = resize_like(prior_lr, scaled)
        band = spatial_band(prior) if trimap is None else trimap.at_scale(scaled.shape[2:])
        n_band = int(band.sum().item())
        if n_band > budget:
            return None, n_band
        masks = Masks(band, band, None, None)
        return compose(self._refine(scaled, prior, band, context), masks, prior, None), n_band

    def _over_budget(self, image, prior_lr, context, n_active, budget, stats, events, trimap) -> torch.Tensor:
        height, width = image.shape[2:]
        result = None
        with self._stage(stats, "refine", events):
            stats.mode = "cascade"
            current = prior_lr
            for scale in CASCADE_SCALES:
                composed, n_band = self._refine_scaled(image, current, context, budget, trimap, scale=scale)
                if composed is None:
                    break
                current = result = composed
                stats.active_pixels = n_band
            if result is None:
                stats.mode = "rescale"
                result, stats.active_pixels = self._rescale(image, prior_lr, context, n_active, budget, trimap)
        with self._stage(stats, "compose", events):
            alpha = F.interpolate(result, size=(height, width), mode="bilinear", align_corners=False)
            return alpha if trimap is None else trimap.fix(alpha)

    def _rescale(self, image, prior_lr, context, n_active, budget, trimap):
        """The published rescale: shrink by sqrt(budget / active), sides to multiples of 8; shrink
        again while the band (fixed in pixels, so relatively wider) is still over budget."""
        height, width = image.shape[2:]
        scale = math.sqrt(budget / float(n_active))
        while True:
            size = (max(8, math.ceil(int(scale * height) / 8) * 8), max(8, math.ceil(int(scale * width) / 8) * 8))
            composed, n_band = self._refine_scaled(image, prior_lr, context, budget, trimap, size=size)
            if composed is not None:  # always by 8 x 8, since the budget is at least MIN_PIXELS
                return composed, n_band
            scale *= 0.9 * math.sqrt(budget / float(n_band))


def _checked_budget(max_pixels: int) -> int:
    if max_pixels < MIN_PIXELS:
        raise ValueError(f"max_pixels must be at least {MIN_PIXELS} (one 8 x 8 tile)")
    return max_pixels


class InProcessMatter:
    """A matte job's frames through a Matter in this process: keeps the job's one stream's state
    between calls, as the engine's stream store does for its streams."""

    def __init__(self, matter: Matter):
        self.matter = matter
        self.state: MatteState | None = None

    def __call__(self, frame_rgb, frame: int | None, new_stream: bool, prior=None, trimap=None, trimap_dilation=0,
                 clean_plate=None, plate_colours=None):
        image = torch.from_numpy(frame_rgb)
        coarse, known, plate = (None if a is None else torch.from_numpy(a) for a in (prior, trimap, clean_plate))
        alpha, self.state, stats = self.matter.matte(image, None if new_stream else self.state, prior=coarse,
                                                     trimap=known, trimap_dilation=trimap_dilation, clean_plate=plate)
        if plate_colours is not None:  # the foreground for the job to write, computed where the alpha is
            colours = torch.from_numpy(plate_colours).to(alpha.device)
            stats.foreground = premultiplied_foreground(colours, alpha).cpu().numpy()
        return alpha.cpu().numpy(), stats
