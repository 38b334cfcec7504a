"""A coarse alpha from a clean plate: how far each pixel of the frame is from the same pixel of a
plate shot without the subject (ours; the published code has no clean-plate input).

Both pictures are reduced to the prior network's input size (bilinear with antialiasing: each
output pixel averages the plate's noise over many input pixels), decoded to linear light, and
the plate's exposure is matched to the frame's by one gain, the median ratio of their
luminances (the subject covers less than half of most frames, so the median is the
background's drift). Their distance is CIE76 Delta E in CIELAB (D65), a perceptual space where
a distance of about 2.3 is just noticeable, box-filtered 3 x 3. The alpha rises linearly from 0
at ``DELTA_E_BACKGROUND`` to 1 at ``DELTA_E_FOREGROUND``; the band the refiner works on is that
ramp (dilated, as any prior's band is). The figures and their reasons are in README.md,
"Clean plates".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DELTA_E_BACKGROUND = 8.0  # at most this far from the plate: background (noise, grain, compression)
DELTA_E_FOREGROUND = 16.0  # at least this far: the subject
GAIN_RANGE = (0.25, 4.0)  # exposure drift a clean plate of the same shot can have, two stops each way
MOSTLY_DIFFERENT = 0.9  # a plate that differs from more of the frame than this is likely another shot's

# Linear Rec.709 / sRGB primaries to CIE XYZ, D65 white (IEC 61966-2-1).
_RGB_TO_XYZ = torch.tensor([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
_WHITE = torch.tensor([0.95047, 1.0, 1.08883])


def _linear(srgb: torch.Tensor) -> torch.Tensor:
    srgb = srgb.clamp(0.0, 1.0)
    return torch.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)


def _lab(linear: torch.Tensor) -> torch.Tensor:
    """(1, 3, h, w) linear RGB -> (1, 3, h, w) CIELAB."""
    xyz = torch.einsum("ij,bjhw->bihw", _RGB_TO_XYZ.to(linear.device), linear)
    t = xyz / _WHITE.to(linear.device).view(1, 3, 1, 1)
    f = torch.where(t > (6 / 29) ** 3, t.clamp_min(1e-12) ** (1 / 3), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return torch.cat([116 * f[:, 1:2] - 16, 500 * (f[:, 0:1] - f[:, 1:2]), 200 * (f[:, 1:2] - f[:, 2:3])], dim=1)


def clean_plate_prior(frame_rgb: torch.Tensor, plate_rgb: torch.Tensor, size: tuple[int, int]
                      ) -> tuple[torch.Tensor, str]:
    """(1, 1, h, w) coarse alpha at ``size`` and a note ('' when the plate fits the shot) from two
    (H, W, 3) display-encoded (sRGB) pictures of the same size."""
    small = [F.interpolate(picture.permute(2, 0, 1)[None].float(), size=size, mode="bilinear", align_corners=False,
                           antialias=True) for picture in (frame_rgb, plate_rgb)]
    frame, plate = (_linear(picture) for picture in small)
    luminance = [(_RGB_TO_XYZ[1].to(frame.device).view(1, 3, 1, 1) * p).sum(1) for p in (frame, plate)]
    lit = luminance[1] > 1e-3
    gain = float((luminance[0][lit] / luminance[1][lit]).median()) if bool(lit.any()) else 1.0
    plate = (plate * min(max(gain, GAIN_RANGE[0]), GAIN_RANGE[1])).clamp(0.0, 1.0)
    distance = (_lab(frame) - _lab(plate)).square().sum(1, keepdim=True).sqrt()
    distance = F.avg_pool2d(distance, 3, stride=1, padding=1, count_include_pad=False)
    alpha = ((distance - DELTA_E_BACKGROUND) / (DELTA_E_FOREGROUND - DELTA_E_BACKGROUND)).clamp(0.0, 1.0)
    different = float((alpha > 0.5).float().mean())
    note = ""
    if not GAIN_RANGE[0] <= gain <= GAIN_RANGE[1]:
        note = (f"the frame is {gain:.2f}x as bright as the clean plate: it may not be this shot's (exposure is "
                f"matched from {GAIN_RANGE[0]:g}x to {GAIN_RANGE[1]:g}x only)")
    elif different > MOSTLY_DIFFERENT:
        note = f"the clean plate differs from {different:.0%} of the frame: it may not be this shot's"
    return alpha, note
