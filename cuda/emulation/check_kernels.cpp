// The CUDA kernels, run under the host emulator (run.sh), against the CPU kernels:
// deterministic SJLT / GraSS / CSR, the transpose and FJLT must be bitwise equal to the CPU;
// fast paths, kron and FactGraSS within 1e-5 (relative to the largest output); mask gather
// byte for byte. Cases cover one and several chunks per row, several rows per block,
// global accumulators (a small shared-memory opt-in limit), misaligned rows, every dtype,
// and rows past one column range of the summation order (grass/detail/sum_order.h), up
// to p = 2^26, where the CPU results are also checked against that order written out
// plainly (order_reference).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "grass/detail/sum_order.h"
#include "grass/grass.h"
#include "grass/hash.h"

using namespace grass;
static int failures = 0;
#define CHECK(c, ...) do { if (!(c)) { ++failures; std::printf("FAIL %s:%d: ", __FILE__, __LINE__); std::printf(__VA_ARGS__); std::printf("\n"); } } while (0)

static std::mt19937_64 rng(123);
static std::vector<float> randn(size_t n) {
  std::normal_distribution<float> d; std::vector<float> v(n); for (auto& x : v) x = d(rng); return v;
}
static uint16_t to_bf16(float f) { uint32_t u; std::memcpy(&u, &f, 4); return (uint16_t)(u >> 16); }
static uint16_t to_f16(float f) {  // simple round-to-nearest for normal range
  uint32_t u; std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000; int e = ((u >> 23) & 0xff) - 127 + 15; uint32_t m = u & 0x7fffff;
  if (e <= 0) return (uint16_t)sign; if (e >= 31) return (uint16_t)(sign | 0x7c00);
  return (uint16_t)(sign | (e << 10) | (m >> 13));
}
struct Typed { DType dt; std::vector<unsigned char> bytes; };
static Typed make(const std::vector<float>& v, DType dt) {
  Typed t{dt, {}};
  if (dt == DType::F32) { t.bytes.resize(v.size() * 4); std::memcpy(t.bytes.data(), v.data(), v.size() * 4); }
  else { t.bytes.resize(v.size() * 2); auto* h = (uint16_t*)t.bytes.data();
    for (size_t i = 0; i < v.size(); ++i) h[i] = dt == DType::BF16 ? to_bf16(v[i]) : to_f16(v[i]); }
  return t;
}
static double maxrel(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0, scale = 1e-6;
  for (size_t i = 0; i < a.size(); ++i) scale = std::max(scale, (double)std::fabs(b[i]));
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs((double)a[i] - b[i]) / scale);
  return m;
}
static bool bitwise(const std::vector<float>& a, const std::vector<float>& b) { return std::memcmp(a.data(), b.data(), a.size() * 4) == 0; }
static const char* dn(DType d) { return dtype_name(d); }

static void test_sjlt(int64_t B, int64_t p, int64_t k, int64_t s, DType dt, int sms, int optin, int offset) {
  if (emu::sms != sms || emu::optin != optin) ++emu::device;  // a new "device": limits are cached per device
  emu::sms = sms; emu::optin = optin;
  SjltParams prm; prm.k = k; prm.s = s; prm.seed = 77;
  auto xv = randn(B * p + 8); Typed x = make(xv, dt);
  const void* xp = x.bytes.data() + offset * dtype_size(dt);  // misaligned rows when offset != 0
  std::vector<float> ref(B * k), fast(B * k, 99.f), det(B * k, 99.f), det2(B * k, 98.f);
  sjlt_cpu(xp, dt, B, p, ref.data(), prm);
  sjlt_cuda(xp, dt, B, p, fast.data(), prm, false, nullptr);
  sjlt_cuda(xp, dt, B, p, det.data(), prm, true, nullptr);
  sjlt_cuda(xp, dt, B, p, det2.data(), prm, true, nullptr);
  CHECK(maxrel(fast, ref) < 1e-5, "sjlt fast B=%lld p=%lld k=%lld s=%lld %s sms=%d optin=%d off=%d rel=%g", (long long)B, (long long)p, (long long)k, (long long)s, dn(dt), sms, optin, offset, maxrel(fast, ref));
  CHECK(bitwise(det, ref), "sjlt det != cpu B=%lld p=%lld k=%lld s=%lld %s sms=%d optin=%d off=%d rel=%g", (long long)B, (long long)p, (long long)k, (long long)s, dn(dt), sms, optin, offset, maxrel(det, ref));
  CHECK(bitwise(det, det2), "sjlt det not reproducible");
  // masked
  std::vector<int64_t> idx(std::max<int64_t>(1, p / 3));
  random_mask_indices(p, idx.size(), 5, idx.data());
  std::vector<float> mref(B * k), mfast(B * k, 99.f), mdet(B * k, 99.f);
  masked_sjlt_cpu(xp, dt, B, p, idx.data(), idx.size(), mref.data(), prm);
  masked_sjlt_cuda(xp, dt, B, p, idx.data(), idx.size(), mfast.data(), prm, false, nullptr);
  masked_sjlt_cuda(xp, dt, B, p, idx.data(), idx.size(), mdet.data(), prm, true, nullptr);
  CHECK(maxrel(mfast, mref) < 1e-5, "masked fast rel=%g", maxrel(mfast, mref));
  CHECK(bitwise(mdet, mref), "masked det != cpu rel=%g", maxrel(mdet, mref));
  // csr from the dense rows, every other element dropped, plus a duplicate per row
  std::vector<int64_t> indptr{0}, ind; std::vector<float> vals;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < p; ++j) if ((j * 7 + b) % 3 != 0) { ind.push_back(j); vals.push_back(xv[b * p + j]); }
    if (p > 0 && b % 2 == 0) { ind.push_back(0); vals.push_back(1.5f); }
    indptr.push_back(ind.size());
  }
  Typed tv = make(vals, dt);
  std::vector<float> cref(B * k), cfast(B * k, 99.f), cdet(B * k, 99.f);
  sjlt_csr_cpu(indptr.data(), ind.data(), tv.bytes.data(), dt, B, p, cref.data(), prm);
  sjlt_csr_cuda(indptr.data(), ind.data(), tv.bytes.data(), dt, B, p, cfast.data(), prm, false, nullptr);
  sjlt_csr_cuda(indptr.data(), ind.data(), tv.bytes.data(), dt, B, p, cdet.data(), prm, true, nullptr);
  CHECK(maxrel(cfast, cref) < 1e-5, "csr fast rel=%g", maxrel(cfast, cref));
  CHECK(bitwise(cdet, cref), "csr det != cpu rel=%g", maxrel(cdet, cref));
  // transpose
  if (dt == DType::F32) {
    auto yv = randn(B * k);
    std::vector<float> tref(B * p), tc(B * p, 99.f);
    sjlt_transpose_cpu(yv.data(), B, p, tref.data(), prm);
    sjlt_transpose_cuda(yv.data(), B, p, tc.data(), prm, nullptr);
    CHECK(maxrel(tc, tref) < 1e-6, "transpose rel=%g", maxrel(tc, tref));
    CHECK(bitwise(tc, tref), "transpose not bitwise (rel=%g)", maxrel(tc, tref));
  }
  // mask gather
  std::vector<unsigned char> gref(B * idx.size() * dtype_size(dt)), gc(gref.size(), 0xcc);
  mask_gather_cpu(xp, dt, B, p, idx.data(), idx.size(), gref.data());
  mask_gather_cuda(xp, dt, B, p, idx.data(), idx.size(), gc.data(), nullptr);
  CHECK(gref == gc, "mask_gather differs");
}

// ---- the summation order past one column range (grass/detail/sum_order.h) ------------

// The order, written out plainly: one row of entries v(e), e < n, in the given segments;
// each segment's partial from +0 in entry order (replicas in order), y = +0 + partials in
// segment order. column(e) is the entry's column of S.
template <class Value, class Column, class NewSegment>
static std::vector<float> order_reference(int64_t n, Value value, Column column, NewSegment new_segment,
                                          const SjltParams& prm) {
  const SjltHash hash(prm.seed, prm.k, prm.s);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(prm.s)));
  std::vector<float> y(prm.k, 0.0f), part(prm.k, 0.0f);
  for (int64_t e = 0; e < n; ++e) {
    if (e > 0 && new_segment(e)) {
      for (int64_t o = 0; o < prm.k; ++o) { y[o] += part[o]; part[o] = 0.0f; }
    }
    const float v = value(e) * scale;
    for (int64_t r = 0; r < prm.s; ++r) {
      int64_t bucket; int neg;
      hash.code(column(e), r, &bucket, &neg);
      part[bucket] += neg ? -v : v;
    }
  }
  for (int64_t o = 0; o < prm.k; ++o) y[o] += part[o];
  return y;
}

static float value_of(const Typed& t, int64_t i) {
  if (t.dt == DType::F32) return load_as_float(reinterpret_cast<const float*>(t.bytes.data()), i, F32Tag{});
  const uint16_t* h = reinterpret_cast<const uint16_t*>(t.bytes.data());
  return t.dt == DType::BF16 ? load_as_float(h, i, BF16Tag{}) : load_as_float(h, i, F16Tag{});
}

static void set_device(int sms, int optin) {
  if (emu::sms != sms || emu::optin != optin) ++emu::device;  // limits are cached per device
  emu::sms = sms; emu::optin = optin;
}

// Dense SJLT and GraSS with rows of several column ranges: deterministic CUDA == CPU ==
// the order written out, for the device limits given (sms: rows per block; optin: shared
// or global accumulators). kp: mask entries (sorted random, or every third column
// repeated and reversed when `learned`).
static void test_dense_order(int64_t B, int64_t p, int64_t k, int64_t s, DType dt, int sms, int optin, int64_t kp,
                             bool learned) {
  set_device(sms, optin);
  SjltParams prm; prm.k = k; prm.s = s; prm.seed = 91;
  const int64_t w = detail::range_width(k);
  Typed x = make(randn(B * p), dt);
  std::vector<float> ref(B * k), det(B * k, 99.f);
  sjlt_cpu(x.bytes.data(), dt, B, p, ref.data(), prm);
  sjlt_cuda(x.bytes.data(), dt, B, p, det.data(), prm, true, nullptr);
  CHECK(bitwise(det, ref), "sjlt det != cpu past ranges B=%lld p=%lld k=%lld (w=%lld) s=%lld %s sms=%d optin=%d rel=%g",
        (long long)B, (long long)p, (long long)k, (long long)w, (long long)s, dn(dt), sms, optin, maxrel(det, ref));
  for (int64_t b = 0; b < B; b += B - 1 > 0 ? B - 1 : 1) {  // first and last rows
    const auto want = order_reference(p, [&](int64_t e) { return value_of(x, b * p + e); },
                                      [](int64_t e) { return e; }, [&](int64_t e) { return e % w == 0; }, prm);
    CHECK(std::memcmp(want.data(), ref.data() + b * k, k * 4) == 0, "sjlt_cpu row %lld is not the order's sum", (long long)b);
  }
  std::vector<int64_t> idx(kp);
  if (learned) {
    for (int64_t j = 0; j < kp; ++j) idx[j] = (p - 1 - (j * 3) % p);  // descending runs, repeats
  } else {
    random_mask_indices(p, kp, 8, idx.data());
  }
  std::vector<float> mref(B * k), mdet(B * k, 99.f);
  masked_sjlt_cpu(x.bytes.data(), dt, B, p, idx.data(), kp, mref.data(), prm);
  masked_sjlt_cuda(x.bytes.data(), dt, B, p, idx.data(), kp, mdet.data(), prm, true, nullptr);
  CHECK(bitwise(mdet, mref), "masked det != cpu past ranges B=%lld p=%lld kp=%lld k=%lld %s sms=%d optin=%d rel=%g",
        (long long)B, (long long)p, (long long)kp, (long long)k, dn(dt), sms, optin, maxrel(mdet, mref));
  const auto mwant = order_reference(kp, [&](int64_t e) { return value_of(x, (B - 1) * p + idx[e]); },
                                     [](int64_t e) { return e; }, [&](int64_t e) { return e % w == 0; }, prm);
  CHECK(std::memcmp(mwant.data(), mref.data() + (B - 1) * k, k * 4) == 0, "masked_sjlt_cpu is not the order's sum");
}

// CSR rows over p columns with about nnz non-zeros each: sorted rows, a row starting past
// the first range, a row stepping back (unsorted), duplicates, an empty row. Deterministic
// CUDA == CPU == the order written out (CsrSegments).
static void test_csr_order(int64_t p, int64_t nnz, int64_t k, int64_t s, DType dt, int sms, int optin) {
  set_device(sms, optin);
  SjltParams prm; prm.k = k; prm.s = s; prm.seed = 93;
  std::vector<int64_t> indptr{0}, ind;
  std::uniform_int_distribution<int64_t> col(0, p - 1);
  auto sorted_row = [&](int64_t lo, int64_t m) {
    std::vector<int64_t> r(m);
    std::uniform_int_distribution<int64_t> c(lo, p - 1);
    for (auto& j : r) j = c(rng);
    std::sort(r.begin(), r.end());
    return r;
  };
  std::vector<std::vector<int64_t>> rows;
  rows.push_back(sorted_row(0, nnz));                       // sorted (repeats possible)
  rows.push_back(sorted_row(p / 2, nnz / 2));               // begins past the first ranges
  {                                                         // steps back, then forward again
    auto r = sorted_row(0, nnz);
    std::rotate(r.begin(), r.begin() + nnz / 3, r.end());
    std::shuffle(r.end() - nnz / 5, r.end(), rng);
    rows.push_back(r);
  }
  rows.push_back({});                                       // empty
  {
    auto r = sorted_row(0, nnz / 4);                        // duplicates, in order
    std::vector<int64_t> d;
    for (int64_t j : r) { d.push_back(j); if (j % 2 == 0) d.push_back(j); }
    rows.push_back(d);
  }
  for (auto& r : rows) { ind.insert(ind.end(), r.begin(), r.end()); indptr.push_back(ind.size()); }
  const int64_t B = static_cast<int64_t>(rows.size());
  Typed vals = make(randn(ind.size() + 1), dt);
  std::vector<float> ref(B * k), det(B * k, 99.f);
  sjlt_csr_cpu(indptr.data(), ind.data(), vals.bytes.data(), dt, B, p, ref.data(), prm);
  sjlt_csr_cuda(indptr.data(), ind.data(), vals.bytes.data(), dt, B, p, det.data(), prm, true, nullptr);
  CHECK(bitwise(det, ref), "csr det != cpu past ranges p=%lld nnz=%lld k=%lld s=%lld %s sms=%d optin=%d rel=%g",
        (long long)p, (long long)nnz, (long long)k, (long long)s, dn(dt), sms, optin, maxrel(det, ref));
  const int64_t w = detail::range_width(k);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t e0 = indptr[b], n = indptr[b + 1] - e0;
    std::vector<char> starts(n + 1, 0);
    detail::CsrSegments seg(p > w ? w : p + 1);
    for (int64_t e = 0; e < n; ++e)
      if (!seg.holds(ind[e0 + e])) { starts[e] = 1; seg.restart(ind[e0 + e]); }
    const auto want = order_reference(n, [&](int64_t e) { return value_of(vals, e0 + e); },
                                      [&](int64_t e) { return ind[e0 + e]; }, [&](int64_t e) { return starts[e] != 0; }, prm);
    CHECK(std::memcmp(want.data(), ref.data() + b * k, k * 4) == 0, "sjlt_csr_cpu row %lld is not the order's sum (rel=%g)",
          (long long)b, maxrel(std::vector<float>(ref.begin() + b * k, ref.begin() + (b + 1) * k), want));
  }
  // Sorted without duplicates, CSR is the dense row: one row, checked against sjlt_cpu.
  if (p <= (int64_t{1} << 20)) {
    std::vector<float> dense(p, 0.0f);
    std::vector<int64_t> ip{0}, ix; std::vector<float> vx;
    for (int64_t j : sorted_row(0, nnz)) if (dense[j] == 0.0f) { dense[j] = 0.5f + (float)(j % 7); ix.push_back(j); vx.push_back(dense[j]); }
    ip.push_back(ix.size());
    std::vector<float> yd(k), yc(k, 99.f);
    sjlt_cpu(dense.data(), DType::F32, 1, p, yd.data(), prm);
    sjlt_csr_cuda(ip.data(), ix.data(), vx.data(), DType::F32, 1, p, yc.data(), prm, true, nullptr);
    CHECK(bitwise(yc, yd), "csr det (sorted) != dense cpu p=%lld rel=%g", (long long)p, maxrel(yc, yd));
  }
}

static void test_fjlt(int64_t B, int64_t p, int64_t k, DType dt) {
  auto xv = randn(B * p); Typed x = make(xv, dt);
  std::vector<float> ref(B * k), c(B * k, 99.f);
  fjlt_cpu(x.bytes.data(), dt, B, p, ref.data(), k, 9);
  fjlt_cuda(x.bytes.data(), dt, B, p, c.data(), k, 9, nullptr);
  CHECK(bitwise(c, ref), "fjlt B=%lld p=%lld k=%lld %s rel=%g", (long long)B, (long long)p, (long long)k, dn(dt), maxrel(c, ref));
}

static void test_kron_factgrass(int64_t B, int64_t T, int64_t din, int64_t dout, bool bias, int64_t k, int64_t s, DType dt, int sms, int optin) {
  if (emu::sms != sms || emu::optin != optin) ++emu::device;  // a new "device": limits are cached per device
  emu::sms = sms; emu::optin = optin;
  KronShape sh; sh.B = B; sh.T = T; sh.d_in = din; sh.d_out = dout; sh.bias = bias;
  Typed a = make(randn(B * T * din), dt), g = make(randn(B * T * dout), dt);
  const int64_t daug = sh.d_in_aug();
  std::vector<float> ref(B * dout * daug), c(ref.size(), 99.f);
  kron_cpu(a.bytes.data(), g.bytes.data(), dt, sh, ref.data());
  kron_cuda(a.bytes.data(), g.bytes.data(), dt, sh, c.data(), nullptr);
  CHECK(maxrel(c, ref) < 1e-5, "kron B=%lld T=%lld %lldx%lld bias=%d %s rel=%g", (long long)B, (long long)T, (long long)din, (long long)dout, bias, dn(dt), maxrel(c, ref));
  std::vector<int64_t> ii(std::max<int64_t>(1, daug * 2 / 3)), io(std::max<int64_t>(1, dout / 2));
  random_mask_indices(daug, ii.size(), 3, ii.data());
  random_mask_indices(dout, io.size(), 4, io.data());
  SjltParams prm; prm.k = k; prm.s = s; prm.seed = 11;
  std::vector<float> fref(B * k), ff(B * k, 99.f), fd(B * k, 99.f), fd2(B * k, 98.f);
  factgrass_cpu(a.bytes.data(), g.bytes.data(), dt, sh, ii.data(), ii.size(), io.data(), io.size(), fref.data(), prm);
  factgrass_cuda(a.bytes.data(), g.bytes.data(), dt, sh, ii.data(), ii.size(), io.data(), io.size(), ff.data(), prm, false, nullptr);
  factgrass_cuda(a.bytes.data(), g.bytes.data(), dt, sh, ii.data(), ii.size(), io.data(), io.size(), fd.data(), prm, true, nullptr);
  factgrass_cuda(a.bytes.data(), g.bytes.data(), dt, sh, ii.data(), ii.size(), io.data(), io.size(), fd2.data(), prm, true, nullptr);
  CHECK(maxrel(ff, fref) < 1e-5, "factgrass fast rel=%g (B=%lld T=%lld k_in=%zu k_out=%zu k=%lld s=%lld)", maxrel(ff, fref), (long long)B, (long long)T, ii.size(), io.size(), (long long)k, (long long)s);
  CHECK(maxrel(fd, fref) < 1e-5, "factgrass det rel=%g", maxrel(fd, fref));
  CHECK(bitwise(fd, fd2), "factgrass det not reproducible");
}

int main(int argc, char** argv) {
  const bool quick = !(argc > 1 && std::strcmp(argv[1], "--full") == 0);
  // SJLT family: shared accumulators with one and several chunks, several rows per block,
  // global accumulators (tiny opt-in), misaligned rows (scalar loads), all dtypes.
  test_sjlt(3, 1000, 7, 1, DType::F32, 132, 232448, 0);
  test_sjlt(1, 1, 1, 1, DType::F32, 132, 232448, 0);
  test_sjlt(5, 9000, 64, 1, DType::F32, 4, 232448, 0);
  test_sjlt(5, 9000, 64, 3, DType::F32, 4, 232448, 1);
  test_sjlt(2, 4099, 33, 2, DType::BF16, 2, 232448, 0);
  test_sjlt(2, 4099, 33, 2, DType::F16, 2, 232448, 3);
  test_sjlt(9, 3000, 300, 1, DType::F32, 1, 232448, 0);
  test_sjlt(3, 5000, 3000, 2, DType::F32, 2, 8192, 0);   // k floats exceed shared memory
  test_sjlt(3, 5000, 3000, 1, DType::F16, 2, 8192, 0);
  test_sjlt(17, 700, 5, 5, DType::BF16, 2, 232448, 0);
  if (!quick) {
    test_sjlt(20, 20000, 16, 1, DType::F32, 8, 232448, 0);
    test_sjlt(4, 70000, 20000, 1, DType::F32, 132, 232448, 0);  // 80 KB accumulator rows (opt-in)
  }
  // Rows past one column range (sum_order.h): the deterministic mode must add the CPU's
  // range partials in order. p = 140000 and 300000 with k <= 2048 (w = 2^17); k = 2049
  // (w = 132096, not a multiple of the 16-bit kernels' 2048-entry tile) with two rows per
  // block (one SM); k = 3000 with global accumulators (tiny opt-in: partial sums in device
  // scratch); GraSS with more mask entries than a range (sorted, and repeated and
  // descending); CSR up to p = 2^26: 512 ranges of 2^17 (k = 256), 64 of 2^20 (k = 16384)
  // and 15 of 4480000 (k = 70000, global accumulators).
  test_dense_order(2, 140000, 64, 1, DType::F32, 132, 232448, 140000, false);
  test_dense_order(2, 300000, 2049, 1, DType::BF16, 1, 232448, 150000, true);
  test_dense_order(2, 300000, 3000, 2, DType::F16, 1, 8192, 200000, false);
  test_csr_order(140000, 30000, 64, 1, DType::F32, 132, 232448);
  test_csr_order(300000, 20000, 3000, 1, DType::F32, 1, 8192);
  test_csr_order(int64_t{1} << 26, 400, 256, 2, DType::F32, 132, 232448);
  test_csr_order(int64_t{1} << 26, 2000, 16384, 1, DType::BF16, 2, 232448);
  test_csr_order(int64_t{1} << 26, 3000, 70000, 1, DType::F16, 4, 232448);
  if (!quick) {
    test_dense_order(3, 300000, 300, 2, DType::F32, 1, 232448, 200000, false);
    test_csr_order(300000, 20000, 2049, 3, DType::BF16, 2, 232448);
    test_csr_order(int64_t{1} << 26, 3000, 256, 2, DType::F32, 132, 232448);
  }
  test_fjlt(3, 1, 1, DType::F32);
  test_fjlt(3, 1000, 17, DType::F32);
  test_fjlt(2, 8192, 8192, DType::BF16);
  test_fjlt(2, 8193, 100, DType::F16);
  if (!quick) test_fjlt(2, 300000, 1000, DType::F32);
  test_kron_factgrass(2, 1, 5, 3, false, 8, 1, DType::F32, 132, 232448);
  test_kron_factgrass(3, 3, 70, 65, true, 50, 2, DType::F32, 2, 232448);
  test_kron_factgrass(2, 20, 130, 70, true, 1000, 1, DType::BF16, 2, 232448);
  test_kron_factgrass(2, 17, 40, 90, false, 3000, 3, DType::F16, 2, 232448);
  test_kron_factgrass(2, 5, 40, 90, true, 30000, 2, DType::F32, 3, 120000);  // global accumulators
  std::printf("%s: %d failure(s), %zu launches\n", failures ? "FAILED" : "OK", failures, emu::launches);
  return failures ? 1 : 0;
}
