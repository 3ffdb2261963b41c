"""The faster training step of issue 19 computes the same functions as the plain formulas.

* ``conv_layout`` gives one-channel (CT) images the channel stride that makes oneDNN pick
  channels-last, so every activation of the networks is channels-last for every task;
* the shallow block applies Mix's first convolution to ``Data(r)`` only and adds the injection's
  half once per solve: equal to ``Mix(Data(r) (+) Inject(d))`` of paper Table 1;
* ``ChannelGroupNorm`` (Mix's per-channel GroupNorm with a faster channels-last backward) equals
  ``nn.GroupNorm`` in value and gradient.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from luser_cli.models.shallow_block import ChannelGroupNorm, ShallowEquilibriumBlock
from luser_cli.models.unrolled import conv_layout

pytestmark = pytest.mark.usefixtures("one_thread")


def _channels_last(t: torch.Tensor) -> bool:
    return t.stride(1) == 1


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_conv_layout_is_channels_last_with_the_same_values(channels: int) -> None:
    x = torch.randn(2, channels, 5, 7)
    y = conv_layout(x)
    assert torch.equal(y, x)
    assert _channels_last(y)
    # and the first convolution of a network then keeps that layout
    out = nn.Conv2d(channels, 8, 3, padding=1)(y)
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_block_step_equals_table_1(channels: int, gen: torch.Generator) -> None:
    block = ShallowEquilibriumBlock(channels).double()
    d = torch.randn(2, channels, 12, 10, generator=gen, dtype=torch.float64)
    r = 0.1 * torch.randn(2, channels, 12, 10, generator=gen, dtype=torch.float64)
    reference = block.mix(torch.cat([block.data(r), block.inject(d)], dim=1))
    fast = block.step(r, block.injection(conv_layout(d)))
    torch.testing.assert_close(fast, reference, rtol=1e-10, atol=1e-12)


def test_block_runs_channels_last_for_ct() -> None:
    block = ShallowEquilibriumBlock(1)
    seen: list[bool] = []
    for layer in block.mix:
        layer.register_forward_hook(lambda m, i, o: seen.append(_channels_last(o)))
    d = conv_layout(torch.randn(2, 1, 16, 16))
    r = torch.zeros(2, 1, 16, 16)  # an iterate as Anderson hands it over: plain NCHW
    block.step(r, block.injection(d))
    assert seen and all(seen)


@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_channel_group_norm_equals_group_norm(layout: str, gen: torch.Generator) -> None:
    c = 6
    fast, plain = ChannelGroupNorm(c, c).double(), nn.GroupNorm(c, c).double()
    with torch.no_grad():
        for m in (fast, plain):
            m.weight.copy_(torch.linspace(0.5, 2.0, c))
            m.bias.copy_(torch.linspace(-1.0, 1.0, c))
    x = torch.randn(3, c, 5, 4, generator=gen, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = fast(x1), plain(x2)
    torch.testing.assert_close(y1, y2, rtol=1e-12, atol=1e-12)
    g = torch.randn(y1.shape, generator=gen, dtype=torch.float64)
    grads1 = torch.autograd.grad(y1, [x1, fast.weight, fast.bias], g)
    grads2 = torch.autograd.grad(y2, [x2, plain.weight, plain.bias], g)
    for a, b in zip(grads1, grads2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    if layout == "channels_last":
        assert _channels_last(y1) and _channels_last(grads1[0])
        assert torch.autograd.gradcheck(lambda t: fast(t), (x1,))


def test_block_state_dict_keys_unchanged() -> None:
    """Weights trained before these changes (the shipped ones) load as they are: a block whose
    Mix layers are plain ``nn.GroupNorm`` (as before) has the same state dict."""
    old_style = ShallowEquilibriumBlock(1)
    for i in (1, 4):
        old_style.mix[i] = nn.GroupNorm(64, 64)
    block = ShallowEquilibriumBlock(1)
    block.load_state_dict(old_style.state_dict(), strict=True)
    assert list(block.state_dict()) == list(old_style.state_dict())
