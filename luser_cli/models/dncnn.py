"""DnCNN (Zhang et al. 2017), the proximal network of LU-DnCNN and DEQ4IP.

17 convolutions of 3x3 with 64 features and no bias: conv + ReLU, then 15 x (conv + BatchNorm +
ReLU), then conv back to the image channels. It returns a *residual*; the caller adds it.
With ``spectral_norm=True`` every convolution is spectrally normalised (DEQ4IP, Ryu et al. 2019).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from luser_cli.models.spectral_norm import spectral_norm as _sn


class DnCNN(nn.Module):
    """``(B, C, H, W) -> (B, C, H, W)`` residual."""

    def __init__(
        self,
        channels: int,
        features: int = 64,
        depth: int = 17,
        spectral_norm: bool = False,
        output_scale: float = 0.01,
    ) -> None:
        super().__init__()

        def conv(c_in: int, c_out: int) -> nn.Conv2d:
            layer = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            return layer

        first = conv(channels, features)
        last = conv(features, channels)
        middle = [conv(features, features) for _ in range(depth - 2)]
        if spectral_norm:
            first, last = _sn(first), _sn(last)
            middle = [_sn(c) for c in middle]
        layers: list[nn.Module] = [first, nn.ReLU(inplace=True)]
        for c in middle:
            layers += [c, nn.BatchNorm2d(features), nn.ReLU(inplace=True)]
        layers.append(last)
        self.net = nn.Sequential(*layers)
        # A small gain on the last BatchNorm starts the residual small (each stage close to its
        # gradient step); unlike scaling the last weight, this survives spectral normalisation.
        with torch.no_grad():
            layers[-3].weight.fill_(output_scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
