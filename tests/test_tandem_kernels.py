"""The one-pass CPU kernels of a tandem step (snncompile/tune/runtime/kernels.py) give the values
of the torch ops they replace, bit for bit, in every layout they accept, and the callers
fall back to those ops where they do not apply."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from snncompile.tune.runtime import kernels
from snncompile.tune.ann_path import CountModel as _CountModel
from snncompile.tune.ann_path import straight_through as _straight_through


def _torch_levels(z: torch.Tensor, lam: torch.Tensor, T: int) -> torch.Tensor:
    v = z * (T / lam)
    return v.add_(0.5).floor_().clamp_(0, T).mul_(lam).div_(T)


def _activations(seed: int, lam: float, T: int) -> torch.Tensor:
    """(4, 6, 9, 7) values around [0, lam]: random ones, the half-levels where rounding
    goes up, their float neighbours, the scale itself, zeros and negatives."""
    g = torch.Generator().manual_seed(seed)
    z = (torch.rand((4, 6, 9, 7), generator=g) * 1.4 - 0.2) * lam
    flat = z.view(-1)
    halves = (torch.arange(T + 1, dtype=torch.float32) + 0.5) * lam / T
    flat[:T + 1] = halves
    flat[T + 1:2 * T + 2] = torch.nextafter(halves, torch.tensor(np.inf))
    flat[2 * T + 2:3 * T + 3] = torch.nextafter(halves, torch.tensor(-np.inf))
    flat[3 * T + 3:3 * T + 9] = lam
    flat[3 * T + 9:3 * T + 12] = 0.0
    return z


@pytest.mark.parametrize("lam,T", [(1.0, 4), (0.37, 8), (2.9e-3, 3), (13.25, 16), (0.61, 1)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_count_levels_are_the_torch_ops_values(lam, T, layout):
    z = _activations(int(lam * 1000) + T, lam, T).contiguous(memory_format=layout)
    lam_t = torch.tensor(lam, dtype=torch.float32).reshape(1, 1, 1)
    got = _CountModel.apply(z, lam_t, T)
    assert got.stride() == z.stride()
    assert torch.equal(got, _torch_levels(z, lam_t, T))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("grad_layout", [torch.contiguous_format, torch.channels_last])
def test_count_model_gradient_is_the_clamps_in_every_layout(layout, grad_layout):
    """Kernel path (same layouts) and torch path (different ones) both give torch's
    gradient of min(relu(z), lam): 1 inside, 1/2 at the scale, a signed zero outside."""
    lam = 0.8
    z = _activations(3, lam, 4).contiguous(memory_format=layout).requires_grad_(True)
    lam_t = torch.tensor(lam).reshape(1, 1, 1)
    up = torch.randn(z.shape, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=grad_layout)
    torch.autograd.backward(_CountModel.apply(z, lam_t, 4), up)
    zz = z.detach().clone().requires_grad_(True)
    torch.autograd.backward(torch.minimum(torch.relu(zz), lam_t), up)
    assert torch.equal(z.grad, zz.grad)
    assert torch.equal(torch.signbit(z.grad), torch.signbit(up * ((zz > 0) & (zz <= lam))))
    assert int((z.grad == up * 0.5).logical_and(up != 0).sum()) == 6  # the six values at lam


def test_kernels_refuse_what_they_cannot_pair():
    x = torch.zeros(2, 3, 4, 5)
    assert kernels.flat(x[:, :, :, ::2]) is None  # strided: not a layout in storage order
    assert kernels.flat(x.double()) is None
    assert kernels.same_layout(x, x.clone()) and not kernels.same_layout(x, x.contiguous(memory_format=torch.channels_last))
    assert kernels.same_layout(torch.zeros(2, 1, 4, 5), torch.zeros(2, 1, 4, 5).contiguous(memory_format=torch.channels_last))


def test_straight_through_is_the_value_forward_and_the_surrogates_gradient():
    value = torch.tensor([[0.25, 1.0, 3.0]])
    s = torch.tensor([[0.3, -2.0, 7.5]], requires_grad=True)
    out = _straight_through(value, s * 2)
    assert torch.equal(out, value) and out.stride() == value.stride()
    out.backward(torch.tensor([[1.0, -3.0, 0.5]]))
    assert torch.equal(s.grad, torch.tensor([[2.0, -6.0, 1.0]]))
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    both = _straight_through(w * 3, w)  # a value with a gradient of its own gets it too
    both.sum().backward()
    assert torch.equal(w.grad, torch.tensor([4.0, 4.0]))
    with pytest.raises(ValueError, match="shape"):
        _straight_through(torch.zeros(3), torch.zeros(1, 3))
