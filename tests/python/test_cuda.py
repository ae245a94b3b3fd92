"""The CUDA kernels against their CPU twins and float64 references (skipped without a GPU).

What is checked here, beyond the device-parametrised tests of each op:

* deterministic CUDA SJLT / GraSS / CSR equals the CPU kernel bit for bit (each output
  element is the same float32 sum in the same order: column ranges summed from +0 and
  added in order, cpp/include/grass/detail/sum_order.h), for rows of one range and of
  many (p up to 2**26), and FJLT and the transpose always do;
* the fast (atomic) path is within the float32 summation bound of a float64 reference;
* the shared-memory regimes of the sketch kernels: several rows per block, rows split in
  chunks (atomic flush), 64 KiB+ accumulators (opt-in) and accumulators in global memory;
* misaligned rows (scalar loads), every input dtype, B = 1, k = 1, s > 1, T > 1;
* deterministic mode is bitwise reproducible; outputs are overwritten, never accumulated
  into; ``out=`` is written in place; kernels run on torch's current stream;
* 64-bit offsets: an input with more than 2**31 elements (when the GPU has the memory).
"""
import math

import pytest
import torch

import grass
from grass import ops, reference
from grass.testing import CUDA_AVAILABLE, CUDA_REASON, assert_close_sum, dtypes, randn

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
needs_cuda = pytest.mark.skipif(not CUDA_AVAILABLE, reason=f"CUDA unavailable: {CUDA_REASON}")

CUDA = torch.device("cuda")


def test_cuda_availability_explains_itself():
    ok, reason = grass.cuda_available()
    assert isinstance(ok, bool) and isinstance(reason, str)
    assert ok == (reason == ""), "a reason is given exactly when CUDA is unavailable"


# ----------------------------------------------------------------------------- helpers

def sketch64(x: torch.Tensor, k: int, s: int, seed: int):
    """float64 reference of S x (from the explicit codes, sparse: any k), the same with
    |x| and |S| (for the error bound), and the number of terms of each bucket."""
    bucket, sign = reference.sjlt_codes(x.shape[1], k, s=s, seed=seed)
    x64 = x.detach().cpu().to(torch.float64)
    cols = bucket.reshape(-1)
    vals = sign.reshape(-1).to(torch.float64) / math.sqrt(s)
    xs = x64.repeat_interleave(s, dim=1)
    y = torch.zeros(x64.shape[0], k, dtype=torch.float64).index_add_(1, cols, xs * vals)
    abs_sum = torch.zeros_like(y).index_add_(1, cols, xs.abs() * vals.abs())
    terms = torch.bincount(cols, minlength=k)
    return y, abs_sum, terms


def misaligned(x: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of x whose data starts one element past an aligned address."""
    buf = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)
    out = buf[1:].view(x.shape)
    out.copy_(x)
    assert out.is_contiguous() and out.data_ptr() % 16 != 0
    return out


def nan_out(shape, device=CUDA):
    """An out= tensor full of NaN: any element the kernel fails to overwrite shows up."""
    return torch.full(shape, float("nan"), dtype=torch.float32, device=device)


# (B, p, k, s, seed): rows per block, chunked rows (atomic flush), k = 16384 (a 64 KiB
# accumulator, shared-memory opt-in) and k = 70000 (too large for shared memory: the y rows
# accumulate in global memory), p not a multiple of the vector width, B = 1, k = 1, s > 1.
SKETCH_CASES = [
    (1, 1, 1, 1, 0),
    (3, 1001, 7, 1, 1),
    (40, 5000, 64, 3, 2),
    (3, 100_000, 64, 1, 3),
    (2, 100_003, 300, 2, 4),
    (3, 70_000, 16_384, 1, 5),
    (2, 50_000, 70_000, 4, 6),
    (9, 4096, 1, 1, 2**64 - 1),
]


# ----------------------------------------------------------------------------- SJLT

@needs_cuda
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("B, p, k, s, seed", SKETCH_CASES)
def test_sjlt_dense(B, p, k, s, seed, dtype, gen):
    x = randn(B, p, dtype=dtype, generator=gen)
    y_cpu = ops.sjlt(x, k, s=s, seed=seed)
    xc = x.to(CUDA)
    y_fast = ops.sjlt(xc, k, s=s, seed=seed, out=nan_out((B, k)))
    y_det = ops.sjlt(xc, k, s=s, seed=seed, deterministic=True, out=nan_out((B, k)))
    y_mis = ops.sjlt(misaligned(xc), k, s=s, seed=seed, deterministic=True)
    assert torch.equal(y_det.cpu(), y_cpu), "deterministic CUDA differs from the CPU kernel"
    assert torch.equal(y_mis.cpu(), y_cpu), "misaligned rows (scalar loads) differ"
    ref, abs_sum, terms = sketch64(x, k, s, seed)
    assert_close_sum(y_fast, ref, abs_sum, terms, "sjlt fast")


@needs_cuda
@pytest.mark.parametrize("B, p, k, s, seed", SKETCH_CASES)
def test_masked_sjlt(B, p, k, s, seed, gen):
    x = randn(B, p, dtype=torch.bfloat16, generator=gen)
    idx = ops.mask_indices(p, max(1, p // 3), seed=seed % 1000)
    y_cpu = ops.masked_sjlt(x, idx, k, s=s, seed=seed)
    xc, ic = x.to(CUDA), idx.to(CUDA)
    y_fast = ops.masked_sjlt(xc, ic, k, s=s, seed=seed, out=nan_out((B, k)))
    y_det = ops.masked_sjlt(xc, ic, k, s=s, seed=seed, deterministic=True)
    assert torch.equal(y_det.cpu(), y_cpu)
    ref, abs_sum, terms = sketch64(x[:, idx], k, s, seed)
    assert_close_sum(y_fast, ref, abs_sum, terms, "masked_sjlt fast")
    # A learned mask: unsorted, with repeats.
    learned = torch.randint(0, p, (max(1, p // 5),), generator=gen)
    y_l = ops.masked_sjlt(xc, learned.to(CUDA), k, s=s, seed=seed, deterministic=True)
    assert torch.equal(y_l.cpu(), ops.masked_sjlt(x, learned, k, s=s, seed=seed))


@needs_cuda
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("B, p, k, s, seed", SKETCH_CASES)
def test_sjlt_csr(B, p, k, s, seed, dtype, gen):
    dense = randn(B, p, generator=gen)
    dense[torch.rand(B, p, generator=gen) < 0.7] = 0
    if B > 1:
        dense[B // 2] = 0  # an empty row
    x = dense.to(dtype).to_sparse_csr()
    y_cpu = ops.sjlt(x, k, s=s, seed=seed)
    xc = x.to(CUDA)
    y_fast = ops.sjlt(xc, k, s=s, seed=seed, out=nan_out((B, k)))
    y_det = ops.sjlt(xc, k, s=s, seed=seed, deterministic=True, out=nan_out((B, k)))
    assert torch.equal(y_det.cpu(), y_cpu)
    ref, abs_sum, terms = sketch64(dense.to(dtype), k, s, seed)
    assert_close_sum(y_fast, ref, abs_sum, terms, "sjlt csr fast")


@needs_cuda
@pytest.mark.parametrize("B, p, k, s, seed", [(1, 1, 1, 1, 0), (3, 1001, 7, 3, 1),
                                              (17, 5000, 64, 1, 2), (2, 70_000, 70_000, 2, 3)])
def test_sjlt_transpose_equals_cpu(B, p, k, s, seed, gen):
    y = randn(B, k, generator=gen)
    x_cpu = ops.sjlt_transpose(y, p, s=s, seed=seed)
    x_cuda = ops.sjlt_transpose(y.to(CUDA), p, s=s, seed=seed, out=nan_out((B, p)))
    assert torch.equal(x_cuda.cpu(), x_cpu)
    # The adjoint identity on the device: <S x, y> = <x, S^T y>.
    x = randn(B, p, generator=gen).to(CUDA)
    lhs = (ops.sjlt(x, k, s=s, seed=seed).double() * y.to(CUDA).double()).sum()
    rhs = (x.double() * x_cuda.double()).sum()
    assert math.isclose(float(lhs), float(rhs), rel_tol=1e-4, abs_tol=1e-4 * math.sqrt(B * p))


# ----------------------------------------------------------------------------- summation order

def range_width(k: int) -> int:
    """Entries per column range of the summation order (cpp/include/grass/detail/sum_order.h)."""
    return -(-max(2**17, 64 * k) // 1024) * 1024


def csr_rows(B: int, p: int, nnz: int, dtype, gen, *, unsorted_row: int = -1):
    """A [B, p] CSR tensor with nnz random non-zeros per row (repeats possible), columns
    sorted except in row `unsorted_row` (rotated, so it steps back to the first range,
    then shuffled at its end)."""
    crow, cols = [0], []
    for b in range(B):
        c = torch.randint(0, p, (nnz,), generator=gen).sort().values
        if b == unsorted_row:
            c = torch.cat([c[nnz // 3:], c[:nnz // 3]])
            tail = c[-(nnz // 5):]
            c[-(nnz // 5):] = tail[torch.randperm(tail.numel(), generator=gen)]
        cols.append(c)
        crow.append(crow[-1] + c.numel())
    col = torch.cat(cols)
    vals = randn(col.numel(), generator=gen).to(dtype)
    return torch.sparse_csr_tensor(torch.tensor(crow), col, vals, size=(B, p))


# Rows past one column range, up to p = 2**26: 512 ranges of 2**17 (k = 256), k = 2049
# (w = 132096, not a multiple of the 16-bit kernels' 2048-entry tile), k = 3000
# (w = 192512) and k = 70_000 (w = 4_480_000; accumulators in global memory, the range
# partials in device scratch).
ORDER_CASES = [  # (B, p, k, s, dtype)
    (2, 140_000, 64, 1, torch.float32),
    (3, 300_000, 300, 2, torch.float32),
    (2, 300_000, 2049, 1, torch.bfloat16),
    (2, 300_000, 3000, 2, torch.float16),
    (1, 2**26, 256, 1, torch.bfloat16),
    (1, 2**26, 70_000, 1, torch.float32),
]


@needs_cuda
@pytest.mark.parametrize("B, p, k, s, dtype", ORDER_CASES)
def test_deterministic_equals_cpu_past_column_ranges(B, p, k, s, dtype, gen):
    w = range_width(k)
    assert p > w, "the case must reach past one column range"
    x = randn(B, p, dtype=dtype, generator=gen)
    xc = x.to(CUDA)
    got = ops.sjlt(xc, k, s=s, seed=3, deterministic=True, out=nan_out((B, k)))
    assert torch.equal(got.cpu(), ops.sjlt(x, k, s=s, seed=3)), "dense"
    # GraSS with more mask entries than a range: a random mask, and a learned one
    # (unsorted, with repeats).
    kp = min(p, w + 12_345)
    for idx in (ops.mask_indices(p, kp, seed=4), torch.randint(0, p, (kp,), generator=gen)):
        got = ops.masked_sjlt(xc, idx.to(CUDA), k, s=s, seed=3, deterministic=True)
        assert torch.equal(got.cpu(), ops.masked_sjlt(x, idx, k, s=s, seed=3)), "masked"
    # CSR: sorted rows, and an unsorted one.
    csr = csr_rows(B + 1, p, 3000 if p > 10**6 else 20_000, dtype, gen, unsorted_row=B)
    got = ops.sjlt(csr.to(CUDA), k, s=s, seed=3, deterministic=True, out=nan_out((B + 1, k)))
    assert torch.equal(got.cpu(), ops.sjlt(csr, k, s=s, seed=3)), "csr"


# ----------------------------------------------------------------------------- masks

@needs_cuda
@pytest.mark.parametrize("dtype", dtypes + [torch.float64])
def test_mask_gather_equals_cpu(dtype, gen):
    x = randn(5, 10_001, dtype=dtype, generator=gen)
    for idx in (ops.mask_indices(10_001, 777, seed=3), torch.randint(0, 10_001, (500,), generator=gen)):
        out = torch.full((5, idx.numel()), float("nan"), dtype=dtype, device=CUDA)
        got = ops.mask_gather(x.to(CUDA), idx.to(CUDA), out=out)
        assert got.data_ptr() == out.data_ptr()
        assert torch.equal(got.cpu(), x[:, idx])


# ----------------------------------------------------------------------------- FJLT

@needs_cuda
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("B, p, k", [(1, 1, 1), (3, 1000, 17), (2, 8192, 8192), (2, 8193, 100),
                                     (2, 300_000, 1000)])
def test_fjlt_equals_cpu(B, p, k, dtype, gen):
    # Same stages, same additions in the same order: equal bit for bit.
    x = randn(B, p, dtype=dtype, generator=gen)
    y_cpu = ops.fjlt(x, k, seed=11)
    y_cuda = ops.fjlt(x.to(CUDA), k, seed=11, out=nan_out((B, k)))
    assert torch.equal(y_cuda.cpu(), y_cpu)


# ----------------------------------------------------------------------------- Kronecker

KRON_CASES = [  # (B, T, d_in, d_out, bias)
    (1, 1, 1, 1, False),
    (3, 1, 70, 65, True),
    (2, 7, 130, 33, False),
    (4, 40, 64, 128, True),
]


@needs_cuda
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("B, T, d_in, d_out, bias", KRON_CASES)
def test_kron(B, T, d_in, d_out, bias, dtype, gen):
    a = randn(B, T, d_in, dtype=dtype, generator=gen)
    g = randn(B, T, d_out, dtype=dtype, generator=gen)
    width = d_out * (d_in + int(bias))
    got = ops.kron(a.to(CUDA), g.to(CUDA), bias=bias, out=nan_out((B, width)))
    abs_sum = reference.kron(a.abs(), g.abs(), bias=bias)
    assert_close_sum(got, reference.kron(a, g, bias=bias), abs_sum, T, "kron")


@needs_cuda
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("B, T, d_in, d_out, bias, k, s", [
    (1, 1, 3, 2, False, 1, 1),
    (3, 1, 70, 65, True, 50, 2),
    (2, 20, 130, 70, True, 1000, 1),
    (2, 9, 40, 90, False, 16_384, 3),
    (2, 3, 100, 80, True, 70_000, 1),
])
def test_factgrass(B, T, d_in, d_out, bias, k, s, dtype, gen):
    a = randn(B, T, d_in, dtype=dtype, generator=gen)
    g = randn(B, T, d_out, dtype=dtype, generator=gen)
    idx_in = ops.mask_indices(d_in + int(bias), max(1, (d_in + int(bias)) * 2 // 3), seed=1)
    idx_out = ops.mask_indices(d_out, max(1, d_out // 2), seed=2)
    ac, gc, ic, oc = a.to(CUDA), g.to(CUDA), idx_in.to(CUDA), idx_out.to(CUDA)
    args = (idx_in, idx_out, k)
    fast = ops.factgrass(ac, gc, ic, oc, k, bias=bias, s=s, seed=5, out=nan_out((B, k)))
    det = ops.factgrass(ac, gc, ic, oc, k, bias=bias, s=s, seed=5, deterministic=True)
    det2 = ops.factgrass(ac, gc, ic, oc, k, bias=bias, s=s, seed=5, deterministic=True)
    assert torch.equal(det, det2), "deterministic FactGraSS is not reproducible"
    # Reference: the masked Kronecker product in float64, then S; bound from |z| terms.
    z64 = reference.kron(a, g, bias=bias).reshape(B, d_out, -1)[:, idx_out][:, :, idx_in].reshape(B, -1)
    zabs = reference.kron(a.abs(), g.abs(), bias=bias).reshape(B, d_out, -1)[:, idx_out][:, :, idx_in]
    ref, _, terms = sketch64(z64, k, s, 5)
    _, abs_sum, _ = sketch64(zabs.reshape(B, -1), k, s, 5)
    for got, what in ((fast, "factgrass fast"), (det, "factgrass det")):
        assert_close_sum(got, ref, abs_sum, terms + T, what)
    # The fused kernel equals the unfused composition on the device (to float tolerance).
    z = ops.kron(ac, gc, bias=bias).reshape(B, d_out, -1)[:, oc][:, :, ic].reshape(B, -1)
    unfused = ops.sjlt(z.contiguous(), k, s=s, seed=5)
    assert_close_sum(fast, unfused.double(), 2 * abs_sum, terms + T, "fused vs unfused")
    cpu = ops.factgrass(a, g, *args, bias=bias, s=s, seed=5)
    assert_close_sum(cpu, ref, abs_sum, terms + T, "factgrass cpu")


# ----------------------------------------------------------------------------- contracts

@needs_cuda
def test_deterministic_mode_is_reproducible(gen):
    x = randn(64, 50_000, generator=gen).to(CUDA)
    csr = x.masked_fill(x.abs() < 1, 0).to_sparse_csr()
    idx = ops.mask_indices(50_000, 9000, seed=1).to(CUDA)
    for k in (32, 4096, 16_384):
        runs = [(ops.sjlt(x, k, deterministic=True), ops.sjlt(csr, k, deterministic=True),
                 ops.masked_sjlt(x, idx, k, s=2, deterministic=True)) for _ in range(3)]
        for later in runs[1:]:
            for first, again in zip(runs[0], later):
                assert torch.equal(first, again)


@needs_cuda
def test_outputs_are_overwritten_not_accumulated(gen):
    # Every regime of the sketch kernels (store, atomic flush, global accumulator) must
    # ignore what out= held before the call.
    x = randn(4, 60_000, generator=gen).to(CUDA)
    for k in (16, 16_384, 70_000):
        out = torch.full((4, k), 1e6, device=CUDA)
        for det in (False, True):
            got = ops.sjlt(x, k, deterministic=det, out=out)
            assert got.data_ptr() == out.data_ptr()
            assert torch.allclose(got, ops.sjlt(x, k, deterministic=True), rtol=1e-5, atol=1e-4)
            out.fill_(-1e6)


@needs_cuda
def test_kernels_run_on_the_current_stream(gen):
    # The input is written on a side stream after a long sleep. A kernel launched on any
    # other stream (e.g. the legacy default stream) would read it before it is written.
    x_src = randn(8, 100_000, generator=gen)
    a_src = randn(8, 5, 40, generator=gen)
    g_src = randn(8, 5, 30, generator=gen)
    want = {
        "sjlt": ops.sjlt(x_src, 512, seed=3),
        "fjlt": ops.fjlt(x_src, 512, seed=3),
        "masked": ops.masked_sjlt(x_src, ops.mask_indices(100_000, 5000, seed=1), 512, seed=3),
        "factgrass": ops.factgrass(a_src, g_src, ops.mask_indices(40, 20, seed=1),
                                   ops.mask_indices(30, 10, seed=2), 64, seed=3),
    }
    x_src, a_src, g_src = x_src.to(CUDA), a_src.to(CUDA), g_src.to(CUDA)
    idx = ops.mask_indices(100_000, 5000, seed=1, device=CUDA)
    ii, io = ops.mask_indices(40, 20, seed=1, device=CUDA), ops.mask_indices(30, 10, seed=2, device=CUDA)
    for det in (False, True):
        x = torch.zeros_like(x_src)
        a, g = torch.zeros_like(a_src), torch.zeros_like(g_src)
        torch.cuda.synchronize()
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            torch.cuda._sleep(200_000_000)  # about 0.1 s of GPU time
            x.copy_(x_src)
            a.copy_(a_src)
            g.copy_(g_src)
            got = {
                "sjlt": ops.sjlt(x, 512, seed=3, deterministic=det),
                "fjlt": ops.fjlt(x, 512, seed=3),
                "masked": ops.masked_sjlt(x, idx, 512, seed=3, deterministic=det),
                "factgrass": ops.factgrass(a, g, ii, io, 64, seed=3, deterministic=det),
            }
            got = {name: y * 1.0 for name, y in got.items()}  # a dependent op on the stream
        side.synchronize()
        for name, y in got.items():
            assert torch.allclose(y.cpu(), want[name], rtol=1e-5, atol=1e-4), (name, det)


@needs_cuda
def test_empty_batches():
    for det in (False, True):
        assert ops.sjlt(torch.empty(0, 100, device=CUDA), 8, deterministic=det).shape == (0, 8)
        y = ops.sjlt(torch.empty(3, 0, device=CUDA), 8, deterministic=det)
        assert torch.equal(y, torch.zeros(3, 8, device=CUDA))
        idx = torch.empty(0, dtype=torch.int64, device=CUDA)
        y = ops.masked_sjlt(torch.ones(3, 10, device=CUDA), idx, 8, deterministic=det)
        assert torch.equal(y, torch.zeros(3, 8, device=CUDA))
    assert ops.fjlt(torch.empty(0, 100, device=CUDA), 8).shape == (0, 8)
    assert ops.kron(torch.empty(0, 2, 3, device=CUDA), torch.empty(0, 2, 4, device=CUDA)).shape == (0, 12)


@needs_cuda
def test_more_than_2_31_elements():
    # 33 rows of 2**26 bfloat16 values (2.2e9 elements, 4.4 GB): the last row starts past
    # 2**31 elements, so any 32-bit offset would read the wrong data.
    B, p, k = 33, 2**26, 256
    free, _ = torch.cuda.mem_get_info()
    if free < 12 * 2**30:
        pytest.skip(f"needs 12 GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    x = torch.empty(B, p, dtype=torch.bfloat16, device=CUDA)
    gen = torch.Generator(device=CUDA).manual_seed(7)
    x.normal_(generator=gen)
    last = x[-1:].cpu()
    idx = ops.mask_indices(p, 4096, seed=1)
    y_cpu = ops.sjlt(last, k)
    ym_cpu = ops.masked_sjlt(last, idx, k)
    for det in (False, True):
        y = ops.sjlt(x, k, deterministic=det)[-1:].cpu()
        ym = ops.masked_sjlt(x, idx.to(CUDA), k, deterministic=det)[-1:].cpu()
        if det:
            assert torch.equal(y, y_cpu) and torch.equal(ym, ym_cpu)
        else:
            assert torch.allclose(y, y_cpu, rtol=1e-4, atol=1e-2)
            assert torch.allclose(ym, ym_cpu, rtol=1e-4, atol=1e-2)
    assert torch.equal(ops.mask_gather(x, idx.to(CUDA))[-1:].cpu(), last[:, idx])
