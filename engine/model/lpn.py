"""Low-resolution prior network (LPN): a MobileNetV2 encoder and a MODNet-style decoder.

Module names mirror the published checkpoint's keys (``lpn.backbone.model.features.*``,
``lpn.decoder.*``) so that its state_dict loads without renaming. The decoder's
auxiliary head (``lpn.aux_head.*``) only trains; inference never builds it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def resize_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear resize (align_corners=False) to ``like``'s height and width."""
    return F.interpolate(x, size=like.shape[2:], mode="bilinear", align_corners=False)


def _conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU6(inplace=True)]


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        layers = [] if expansion == 1 else _conv_bn_relu6(cin, hidden, 1)
        layers += _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden)
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2, width 1.0, expansion 6, no classifier."""

    # (expansion, channels, repeats, first stride)
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    # features[i] output taken as the encoder's 2x, 4x, 8x, 16x and 32x features
    TAPS = (1, 3, 6, 13, 18)
    CHANNELS = (16, 24, 32, 96, 1280)

    def __init__(self, in_channels: int = 3):
        super().__init__()
        layers = [nn.Sequential(*_conv_bn_relu6(in_channels, 32, 3, 2))]
        cin = 32
        for expansion, cout, repeats, stride in self.SETTINGS:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expansion))
                cin = cout
        layers.append(nn.Sequential(*_conv_bn_relu6(cin, 1280, 1)))
        self.features = nn.Sequential(*layers)

    def forward(self, x) -> list[torch.Tensor]:
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.TAPS:
                taps.append(x)
        return taps


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = MobileNetV2()

    def forward(self, x):
        return self.model(x)


class IBNorm(nn.Module):
    """Batch norm on the first half of the channels, instance norm (no affine) on the second."""

    def __init__(self, channels: int):
        super().__init__()
        self.split = channels // 2
        self.bnorm = nn.BatchNorm2d(self.split)

    def forward(self, x):
        return torch.cat([self.bnorm(x[:, :self.split]), F.instance_norm(x[:, self.split:])], dim=1)


class ConvNormRelu(nn.Module):
    """Convolution, optional IBNorm, optional ReLU; parameters under ``layers.*`` as published."""

    def __init__(self, cin: int, cout: int, kernel: int, norm: bool = True, relu: bool = True):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, 1, kernel // 2)]
        if norm:
            layers.append(IBNorm(cout))
        if relu:
            layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


def _head(cin: int) -> ConvNormRelu:
    """1x1 projection to one logit channel."""
    return ConvNormRelu(cin, 1, 1, norm=False, relu=False)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(channels // reduction, channels, bias=False), nn.Sigmoid())

    def forward(self, x):
        return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


class Decoder(nn.Module):
    """Coarse-to-fine decoder; returns the fused alpha logit and the 1/16 features (the context)."""

    def __init__(self, hr: int = 32, enc: tuple[int, ...] = MobileNetV2.CHANNELS):
        super().__init__()
        self.se_block = SqueezeExcite(enc[4])
        self.p32x = _head(enc[4])
        self.conv_dec16x = nn.Sequential(ConvNormRelu(enc[4] + enc[3], 2 * hr, 3), ConvNormRelu(2 * hr, hr, 3))
        self.p16x = _head(hr + 1)
        self.conv_dec8x = nn.Sequential(ConvNormRelu(hr + enc[2], 2 * hr, 3), ConvNormRelu(2 * hr, hr, 3))
        self.p8x = _head(hr + 1)
        self.conv_dec4x = nn.Sequential(ConvNormRelu(hr + enc[1], 2 * hr, 3), ConvNormRelu(2 * hr, hr, 3))
        self.p4x = _head(hr)
        self.conv_dec2x = nn.Sequential(ConvNormRelu(hr + enc[0], 2 * hr, 3), ConvNormRelu(2 * hr, hr, 3),
                                        ConvNormRelu(hr, hr, 3))
        self.p2x = _head(hr + 1)
        self.conv_dec1x = nn.Sequential(ConvNormRelu(hr + 3, hr, 3))
        self.p1x = _head(hr + 1)
        self.p0x = _head(2)

    def forward(self, img, enc2x, enc4x, enc8x, enc16x, enc32x):
        def up2(x):
            return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

        enc32x = self.se_block(enc32x)
        p32x = resize_like(self.p32x(enc32x), img)

        dec16x = self.conv_dec16x(torch.cat([up2(enc32x), enc16x], dim=1))
        p16x = resize_like(self.p16x(torch.cat([dec16x, resize_like(p32x, dec16x)], dim=1)), img)

        dec8x = self.conv_dec8x(torch.cat([up2(dec16x), enc8x], dim=1))
        p8x = resize_like(self.p8x(torch.cat([dec8x, resize_like(p16x, dec8x)], dim=1)), img)

        dec4x = self.conv_dec4x(torch.cat([up2(dec8x), enc4x], dim=1))
        p4x = resize_like(self.p4x(dec4x), img)

        dec2x = self.conv_dec2x(torch.cat([up2(dec4x), enc2x], dim=1))
        p2x = resize_like(self.p2x(torch.cat([dec2x, resize_like(p4x, dec2x)], dim=1)), img)

        dec1x = self.conv_dec1x(torch.cat([up2(dec2x), img], dim=1))
        p1x = self.p1x(torch.cat([dec1x, resize_like(p2x, dec1x)], dim=1))

        p0x = self.p0x(torch.cat([p1x, resize_like(p8x, p1x)], dim=1))
        return p0x, dec16x


class PriorNetwork(nn.Module):
    """LPN: image at about 512 px (sides multiples of 32) -> (alpha, 32-channel context at 1/16)."""

    def __init__(self):
        super().__init__()
        self.backbone = Backbone()
        self.decoder = Decoder()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit, context = self.decoder(image, *self.backbone(image))
        return torch.sigmoid(logit), context
