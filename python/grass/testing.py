"""Helpers for tests parametrised over devices and dtypes (as in torch_scatter.testing).

    @pytest.mark.parametrize("device", devices)
    @pytest.mark.parametrize("dtype", dtypes)
    def test_op(device, dtype): ...

CUDA joins ``devices`` by itself when grass and torch can both run on a GPU here, so every
test written this way covers the CUDA kernels on a GPU machine.
"""
from __future__ import annotations

import torch

from .ops import cuda_available

CUDA_AVAILABLE, CUDA_REASON = cuda_available()

#: Devices every kernel test runs on.
devices = [torch.device("cpu")] + ([torch.device("cuda")] if CUDA_AVAILABLE else [])

#: Input dtypes of the sketching kernels (accumulation is float32 for all of them).
dtypes = [torch.float32, torch.float16, torch.bfloat16]

#: Input dtypes of the gathers (a gather moves bits, so float64 works too).
gather_dtypes = dtypes + [torch.float64]

#: Machine epsilon of float32, the precision every sketch accumulates in.
EPS32 = torch.finfo(torch.float32).eps


def randn(*shape, dtype=torch.float32, device="cpu", generator=None) -> torch.Tensor:
    """Standard normal values drawn on the CPU from ``generator`` (so a seeded generator
    gives the same input on every device), rounded to ``dtype``, moved to ``device``."""
    x = torch.randn(*shape, generator=generator, dtype=torch.float32)
    return x.to(dtype).to(device)


def accumulation_atol(abs_sum: torch.Tensor, terms: int) -> torch.Tensor:
    """An absolute error bound for float32 sums: ``terms * eps * sum |term|`` per element
    (the classical worst case of recursive summation, which any float32 summation order
    satisfies), plus one ulp of slack for the final rounding.

    ``abs_sum`` is the same computation done on absolute values in float64.
    """
    return (terms + 1) * EPS32 * abs_sum


def assert_close_sum(actual: torch.Tensor, expected: torch.Tensor, abs_sum: torch.Tensor,
                     terms: int, what: str = ""):
    """Asserts |actual - expected| <= accumulation_atol(abs_sum, terms) elementwise, with a
    message naming the worst element."""
    actual = actual.detach().to(torch.float64).cpu()
    expected = expected.detach().to(torch.float64).cpu()
    abs_sum = abs_sum.detach().to(torch.float64).cpu()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual - expected).abs()
    bound = accumulation_atol(abs_sum, terms)
    excess = err - bound
    if excess.numel() and float(excess.max()) > 0:
        i = int(excess.argmax())
        idx = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), err.shape))
        raise AssertionError(
            f"{what}: element {idx} = {float(actual.flatten()[i])!r}, expected "
            f"{float(expected.flatten()[i])!r} (error {float(err.flatten()[i]):.3g} > bound "
            f"{float(bound.flatten()[i]):.3g})")
