"""The sparse refiner (the paper's SHM, sparse high-resolution module): alpha at the active pixels only.

A sparse ResNet-18 encoder (levels 1, 1/2, 1/4, 1/8), a context attention that
re-weights the deepest features from the prior network's context, and a decoder
of inverse convolutions back to full resolution. Module names mirror the
published checkpoint (``shm.ctx.*``, ``shm.backbone.*``, ``shm.decoder.*``).

Convolutions are run by a backend (``backends.py``) through named rules:
``subm{L}`` (3x3 submanifold at level L), ``subm{L}_d2`` (dilation 2),
``down{L}`` (stride 2 from level L to L+1) and ``up{L}`` (its inverse).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .lpn import ConvNormRelu


class SparseConv(nn.Module):
    """A sparse convolution's parameters: weight ``(K, C_in, C_out)``, K = 9 (3x3) or 1 (1x1)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, bias: bool = False, rule: str | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(kernel * kernel, cin, cout))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.rule = rule  # None for 1x1: a plain matrix product, as spconv does

    def forward(self, features: torch.Tensor, plan) -> torch.Tensor:
        if self.rule is None:
            out = features @ self.weight[0]
            return out if self.bias is None else out + self.bias
        return plan.conv(self.rule, features, self.weight, self.bias)


def _bn_relu(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    return torch.relu(bn(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, conv1_rule: str, rule: str, downsample_rule: str | None):
        super().__init__()
        self.conv1 = SparseConv(cin, cout, rule=conv1_rule)
        self.bn1 = nn.BatchNorm1d(cout)
        self.conv2 = SparseConv(cout, cout, bias=True, rule=rule)
        self.bn2 = nn.BatchNorm1d(cout)
        self.downsample = None
        if downsample_rule is not None:
            self.downsample = nn.ModuleList([SparseConv(cin, cout, rule=downsample_rule), nn.BatchNorm1d(cout)])

    def forward(self, x, plan):
        out = self.bn2(self.conv2(_bn_relu(self.bn1, self.conv1(x, plan)), plan))
        residual = x if self.downsample is None else self.downsample[1](self.downsample[0](x, plan))
        return torch.relu(out + residual)


class SparseResNet18(nn.Module):
    """Encoder. Returns the features of levels 1/2, 1/4 and 1/8 (the decoder's skips and input)."""

    def __init__(self, cin: int = 4):
        super().__init__()
        self.conv1 = SparseConv(cin, 64, rule="subm0")
        self.bn1 = nn.BatchNorm1d(64)
        self.conv2 = SparseConv(64, 64, rule="down0")
        self.bn2 = nn.BatchNorm1d(64)
        self.conv3 = SparseConv(64, 64, rule="subm1")
        self.bn3 = nn.BatchNorm1d(64)
        # The published layer1 is declared with 128 input channels but receives 64; the
        # checkpoint loader keeps the part of those weights spconv 1.x actually used.
        self.layer1 = nn.ModuleList([BasicBlock(64, 64, "down1", "subm2", "down1"), BasicBlock(64, 64, "subm2", "subm2", None)])
        self.layer2 = nn.ModuleList([BasicBlock(64, 128, "down2", "subm3", "down2"),
                                     BasicBlock(128, 128, "subm3", "subm3", None)])
        self.layer3 = nn.ModuleList([BasicBlock(128, 256, "subm3", "subm3", "subm3"),
                                     BasicBlock(256, 256, "subm3", "subm3", None)])
        # The published code (spconv 1.x, one rulebook dict for the whole network) gives
        # layer4.0's downsample, declared dilation 1, the dilation-2 rulebook that conv1 stored
        # under their shared indice_key just before it: the weights were trained that way.
        # Every other shared key joins layers of identical parameters or 1x1 convolutions
        # (no rulebook). See docs/FIDELITY.md.
        self.layer4 = nn.ModuleList([BasicBlock(256, 512, "subm3_d2", "subm3", "subm3_d2"),
                                     BasicBlock(512, 512, "subm3", "subm3", None)])

    def forward(self, x, plan):
        x = _bn_relu(self.bn1, self.conv1(x, plan))
        x = _bn_relu(self.bn2, self.conv2(x, plan))
        half = _bn_relu(self.bn3, self.conv3(x, plan))
        x = quarter = self._run(self.layer1, half, plan)
        for layer in (self.layer2, self.layer3, self.layer4):
            x = self._run(layer, x, plan)
        return half, quarter, x

    @staticmethod
    def _run(layer: nn.ModuleList, x, plan):
        for block in layer:
            x = block(x, plan)
        return x


class ContextAttention(nn.Module):
    """Channel weights for the deepest sparse features from the prior's context, pooled
    separately over the (soft) foreground and background of the upsampled prior alpha."""

    def __init__(self, local_channels: int = 512, context_channels: int = 32):
        super().__init__()
        self.conv_f = ConvNormRelu(context_channels, context_channels, 1, norm=False)
        self.conv_b = ConvNormRelu(context_channels, context_channels, 1, norm=False)
        self.conv_g = ConvNormRelu(2 * context_channels, local_channels, 1, norm=False, relu=False)

    def forward(self, context: torch.Tensor, prior_full: torch.Tensor) -> torch.Tensor:
        mask = F.interpolate(prior_full, size=context.shape[2:], mode="bilinear", align_corners=False)
        fg = self.conv_f((context * mask).mean(dim=(2, 3), keepdim=True))
        bg = self.conv_b((context * (1 - mask)).mean(dim=(2, 3), keepdim=True))
        return torch.sigmoid(self.conv_g(torch.cat([fg, bg], dim=1))).flatten()


class SparseDecoder(nn.Module):
    """Inverse convolutions 1/8 -> 1/4 -> 1/2 -> 1, with encoder skips and the image at full size.

    The published decoder also emits side outputs (conv_p8x, conv_p4x, conv_p2x) that
    only training's loss uses: computed with ``side_outputs=True``, never in inference.
    """

    def __init__(self):
        super().__init__()
        self.conv_up1 = nn.ModuleList([SparseConv(512, 256, bias=True, rule="up2"), nn.BatchNorm1d(256)])
        self.conv_up2 = nn.ModuleList([SparseConv(256 + 64, 256, bias=True, rule="up1"), nn.BatchNorm1d(256)])
        self.conv_up3 = nn.ModuleList([SparseConv(256 + 64, 64, bias=True, rule="up0"), nn.BatchNorm1d(64)])
        self.conv_up4_alpha = nn.ModuleList([
            SparseConv(64 + 3, 32, bias=True, rule="subm0"), nn.LeakyReLU(),
            SparseConv(32, 16, bias=True, rule="subm0"), nn.LeakyReLU(),
            SparseConv(16, 1, kernel=1),
        ])
        self.conv_p8x = SparseConv(256, 1, kernel=1)
        self.conv_p4x = SparseConv(256, 1, kernel=1)
        self.conv_p2x = SparseConv(64, 1, kernel=1)

    @staticmethod
    def _up(stage: nn.ModuleList, x, plan):
        return F.leaky_relu(stage[1](stage[0](x, plan)))

    def forward(self, image_rgb01, half, quarter, deepest, plan, side_outputs: bool = False):
        """Alpha per full-resolution site; with ``side_outputs``, also the alphas per site of the
        1/4, 1/2 and full-resolution levels' decoder features (conv_p8x, conv_p4x, conv_p2x)."""
        at_quarter = self._up(self.conv_up1, deepest, plan)
        at_half = self._up(self.conv_up2, torch.cat([at_quarter, quarter], dim=1), plan)
        x = at_full = self._up(self.conv_up3, torch.cat([at_half, half], dim=1), plan)
        x = torch.cat([x, image_rgb01], dim=1)
        for layer in self.conv_up4_alpha:
            x = layer(x, plan) if isinstance(layer, SparseConv) else layer(x)
        alpha = torch.sigmoid(x[:, 0])
        if not side_outputs:
            return alpha
        # through a sigmoid as the alpha is (our reading: the label they meet is an alpha in [0, 1])
        sides = [torch.sigmoid(head(features, plan)[:, 0]) for head, features in
                 ((self.conv_p8x, at_quarter), (self.conv_p4x, at_half), (self.conv_p2x, at_full))]
        return alpha, sides


class SparseRefiner(nn.Module):
    """SHM: per-site inputs (normalized BGR and prior, 4 channels) -> refined alpha per site."""

    def __init__(self):
        super().__init__()
        self.ctx = ContextAttention()
        self.backbone = SparseResNet18(4)
        self.decoder = SparseDecoder()
        # every rule a forward pass uses, so a plan can build all its rulebooks at once
        self.rules = tuple(sorted({m.rule for m in self.modules() if isinstance(m, SparseConv) and m.rule}))

    def forward(self, site_inputs: torch.Tensor, plan, context: torch.Tensor, prior_full: torch.Tensor,
                side_outputs: bool = False):
        half, quarter, deepest = self.backbone(site_inputs, plan)
        deepest = deepest * self.ctx(context, prior_full)
        # the decoder sees the image back in [0, 1]
        return self.decoder(site_inputs[:, :3] * 0.5 + 0.5, half, quarter, deepest, plan, side_outputs)
