// grass._C: the one nanobind module. It turns DLPack arrays (torch CPU/CUDA tensors,
// numpy arrays) into raw pointers, checks them, releases the GIL and calls grass_core.
//
// Every array argument is .noconvert(): an array of the wrong dtype, device or layout
// is an error here, never silently copied (a copied out= would lose the result).
// Arguments are checked again here although grass.ops checks first, because this is
// the last line before raw pointers: shapes, dtypes, devices, C-contiguity from the
// strides, and that out does not overlap an input. grass::Error -> ValueError.
//
// CUDA arrays go to the *_cuda twins (compiled with GRASS_WITH_CUDA) on the stream the
// caller passes as an integer (torch.cuda.current_stream().cuda_stream); the caller also
// makes the arrays' device current. The CPU kernels range-check index arrays themselves;
// on CUDA that would need a device copy, so grass.ops checks them on the device first.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <string>

#include "grass/grass.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using grass::DType;

// Inputs are read-only views (read-only numpy arrays are accepted); outputs writable.
using In = nb::ndarray<nb::ro>;
using Out = nb::ndarray<>;

enum class Device { CPU, CUDA };

template <typename... Args>
[[noreturn]] void fail(const char* fn, const char* fmt, Args... args) {
  grass::detail::throw_error(fn, fmt, args...);
}

std::string dtype_str(nb::dlpack::dtype t) {
  using Code = nb::dlpack::dtype_code;
  std::string base;
  switch (static_cast<Code>(t.code)) {
    case Code::Int: base = "int"; break;
    case Code::UInt: base = "uint"; break;
    case Code::Float: base = "float"; break;
    case Code::Bfloat: base = "bfloat"; break;
    case Code::Complex: base = "complex"; break;
    case Code::Bool: return "bool";
    default: base = "dtype_code_" + std::to_string(t.code) + "_"; break;
  }
  std::string s = base + std::to_string(t.bits);
  if (t.lanes != 1) s += "x" + std::to_string(t.lanes);
  return s;
}

template <typename A>
std::string shape_str(const A& a) {
  std::string s = "(";
  for (size_t i = 0; i < a.ndim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(a.shape(i));
  }
  if (a.ndim() == 1) s += ",";
  return s + ")";
}

template <typename A>
int64_t dim(const A& a, size_t i) {
  return static_cast<int64_t>(a.shape(i));
}

template <typename A>
void check_ndim(const char* fn, const char* name, const A& a, size_t ndim, const char* layout) {
  if (a.ndim() != ndim)
    fail(fn, "%s must be a %zu-D array %s, got shape %s", name, ndim, layout,
         shape_str(a).c_str());
}

// C-contiguous from the strides (in elements); size-1 dimensions may have any stride,
// as in torch's is_contiguous().
template <typename A>
void check_contiguous(const char* fn, const char* name, const A& a) {
  if (a.size() == 0) return;
  int64_t expected = 1;
  for (size_t i = a.ndim(); i-- > 0;) {
    const int64_t n = dim(a, i);
    if (n != 1 && a.stride(i) != expected)
      fail(fn, "%s must be C-contiguous, got shape %s with stride %lld in dimension %zu "
               "(expected %lld); call .contiguous() first",
           name, shape_str(a).c_str(), (long long)a.stride(i), i, (long long)expected);
    expected *= n;
  }
}

template <typename A>
Device device_of(const char* fn, const char* name, const A& a) {
  if (a.device_type() == nb::device::cpu::value) return Device::CPU;
  if (a.device_type() == nb::device::cuda::value) return Device::CUDA;
  fail(fn, "%s must be on the CPU or a CUDA device, got DLPack device type %d", name,
       a.device_type());
}

const char* device_str(int device_type) {
  return device_type == nb::device::cpu::value ? "cpu"
         : device_type == nb::device::cuda::value ? "cuda" : "other";
}

template <typename A, typename R>
void check_same_device(const char* fn, const char* name, const A& a, const char* ref_name,
                       const R& ref) {
  if (a.device_type() != ref.device_type() || a.device_id() != ref.device_id())
    fail(fn, "%s must be on the same device as %s (%s:%d), got %s:%d", name, ref_name,
         device_str(ref.device_type()), ref.device_id(), device_str(a.device_type()),
         a.device_id());
}

template <typename A>
void check_cpu(const char* fn, const char* name, const A& a) {
  if (a.device_type() != nb::device::cpu::value)
    fail(fn, "%s must be a CPU array, got device %s:%d", name, device_str(a.device_type()),
         a.device_id());
}

// The float-family DType of a, or an error naming what came.
template <typename A>
DType float_dtype(const char* fn, const char* name, const A& a, bool allow_f64) {
  const nb::dlpack::dtype t = a.dtype();
  if (t.lanes == 1) {
    if (t.code == (uint8_t)nb::dlpack::dtype_code::Float) {
      if (t.bits == 32) return DType::F32;
      if (t.bits == 16) return DType::F16;
      if (t.bits == 64 && allow_f64) return DType::F64;
    } else if (t.code == (uint8_t)nb::dlpack::dtype_code::Bfloat && t.bits == 16) {
      return DType::BF16;
    }
  }
  fail(fn, "%s must be %s, got %s", name,
       allow_f64 ? "float32, float16, bfloat16 or float64" : "float32, float16 or bfloat16",
       dtype_str(t).c_str());
}

template <typename T, typename A>
void check_dtype(const char* fn, const char* name, const A& a) {
  const nb::dlpack::dtype want = nb::dtype<T>();
  if (a.dtype() != want)
    fail(fn, "%s must be %s, got %s", name, dtype_str(want).c_str(), dtype_str(a.dtype()).c_str());
}

template <typename A>
void check_shape(const char* fn, const char* name, const A& a,
                 std::initializer_list<int64_t> shape, const char* layout) {
  bool ok = a.ndim() == shape.size();
  size_t i = 0;
  for (int64_t n : shape) ok = ok && dim(a, i++) == n;
  if (!ok) {
    std::string want = "(";
    i = 0;
    for (int64_t n : shape) want += (i++ ? ", " : "") + std::to_string(n);
    if (shape.size() == 1) want += ",";
    want += ")";
    fail(fn, "%s must have shape %s = %s, got %s", name, layout, want.c_str(),
         shape_str(a).c_str());
  }
}

// out must not share memory with an input: the kernels read inputs while writing out.
template <typename A, typename B>
void check_no_overlap(const char* fn, const char* out_name, const A& out, const char* in_name,
                      const B& in) {
  if (out.size() == 0 || in.size() == 0 || out.device_type() != in.device_type()) return;
  const auto* o = static_cast<const uint8_t*>(static_cast<const void*>(out.data()));
  const auto* i = static_cast<const uint8_t*>(static_cast<const void*>(in.data()));
  if (o < i + in.nbytes() && i < o + out.nbytes())
    fail(fn, "%s must not share memory with %s", out_name, in_name);
}

// Device dispatch: CUDA calls compile only into CUDA builds; other builds refuse CUDA
// arrays up front, before the GIL is released.
#if defined(GRASS_WITH_CUDA)
#define GRASS_CUDA_CALL(...) __VA_ARGS__
void* as_stream(uintptr_t stream) { return reinterpret_cast<void*>(stream); }
void require_cuda_build(const char*, Device) {}
#else
#define GRASS_CUDA_CALL(...) ((void)0)
void require_cuda_build(const char* fn, Device device) {
  if (device == Device::CUDA)
    fail(fn, "got CUDA arrays, but %s", grass::cuda_runtime_status().reason.c_str());
}
#endif

grass::SjltParams sjlt_params(int64_t k, int64_t s, uint64_t seed) {
  grass::SjltParams params;
  params.k = k;
  params.s = s;
  params.seed = seed;
  grass::check_sjlt_params(params);
  return params;
}

// ---------------------------------------------------------------- SJLT

// deterministic and stream matter only to the CUDA twins.
void sjlt(const In& x, const Out& out, int64_t k, int64_t s, uint64_t seed,
          [[maybe_unused]] bool deterministic, [[maybe_unused]] uintptr_t stream) {
  const char* fn = "_C.sjlt";
  check_ndim(fn, "x", x, 2, "[B, p]");
  const DType dtype = float_dtype(fn, "x", x, false);
  const int64_t B = dim(x, 0), p = dim(x, 1);
  check_shape(fn, "out", out, {B, k}, "[B, k]");
  check_dtype<float>(fn, "out", out);
  const Device device = device_of(fn, "x", x);
  check_same_device(fn, "out", out, "x", x);
  check_contiguous(fn, "x", x);
  check_contiguous(fn, "out", out);
  check_no_overlap(fn, "out", out, "x", x);
  const grass::SjltParams params = sjlt_params(k, s, seed);
  float* y = static_cast<float*>(out.data());
  require_cuda_build(fn, device);
  nb::gil_scoped_release release;
  if (device == Device::CPU) {
    grass::sjlt_cpu(x.data(), dtype, B, p, y, params);
  } else {
    GRASS_CUDA_CALL(
        grass::sjlt_cuda(x.data(), dtype, B, p, y, params, deterministic, as_stream(stream)));
  }
}

void sjlt_csr(const In& indptr, const In& indices, const In& values, const Out& out, int64_t p,
              int64_t k, int64_t s, uint64_t seed, [[maybe_unused]] bool deterministic,
              [[maybe_unused]] uintptr_t stream) {
  const char* fn = "_C.sjlt_csr";
  check_ndim(fn, "indptr", indptr, 1, "[B + 1]");
  check_ndim(fn, "indices", indices, 1, "[nnz]");
  check_ndim(fn, "values", values, 1, "[nnz]");
  check_dtype<int64_t>(fn, "indptr", indptr);
  check_dtype<int64_t>(fn, "indices", indices);
  const DType dtype = float_dtype(fn, "values", values, false);
  if (dim(indptr, 0) < 1) fail(fn, "indptr must have B + 1 >= 1 entries, got 0");
  const int64_t B = dim(indptr, 0) - 1, nnz = dim(indices, 0);
  check_shape(fn, "values", values, {nnz}, "[nnz]");
  check_shape(fn, "out", out, {B, k}, "[B, k]");
  check_dtype<float>(fn, "out", out);
  if (p < 0) fail(fn, "p must be >= 0, got %lld", (long long)p);
  const Device device = device_of(fn, "values", values);
  check_same_device(fn, "indptr", indptr, "values", values);
  check_same_device(fn, "indices", indices, "values", values);
  check_same_device(fn, "out", out, "values", values);
  check_contiguous(fn, "indptr", indptr);
  check_contiguous(fn, "indices", indices);
  check_contiguous(fn, "values", values);
  check_contiguous(fn, "out", out);
  check_no_overlap(fn, "out", out, "values", values);
  check_no_overlap(fn, "out", out, "indices", indices);
  check_no_overlap(fn, "out", out, "indptr", indptr);
  const grass::SjltParams params = sjlt_params(k, s, seed);
  const auto* ip = static_cast<const int64_t*>(indptr.data());
  const auto* ix = static_cast<const int64_t*>(indices.data());
  float* y = static_cast<float*>(out.data());
  // The kernel checks indptr[0] == 0 and that indptr is non-decreasing, but cannot know
  // nnz: an indptr[B] beyond it would read past indices and values.
  if (device == Device::CPU && ip[B] != nnz)
    fail(fn, "indptr[B] must equal nnz = %lld, got indptr[%lld] = %lld", (long long)nnz,
         (long long)B, (long long)ip[B]);
  require_cuda_build(fn, device);
  nb::gil_scoped_release release;
  if (device == Device::CPU) {
    grass::sjlt_csr_cpu(ip, ix, values.data(), dtype, B, p, y, params);
  } else {
    GRASS_CUDA_CALL(grass::sjlt_csr_cuda(ip, ix, values.data(), dtype, B, p, y, params,
                                         deterministic, as_stream(stream)));
  }
}

void sjlt_transpose(const In& y, const Out& out, int64_t s, uint64_t seed,
                    [[maybe_unused]] uintptr_t stream) {
  const char* fn = "_C.sjlt_transpose";
  check_ndim(fn, "y", y, 2, "[B, k]");
  check_ndim(fn, "out", out, 2, "[B, p]");
  check_dtype<float>(fn, "y", y);
  check_dtype<float>(fn, "out", out);
  const int64_t B = dim(y, 0), k = dim(y, 1), p = dim(out, 1);
  check_shape(fn, "out", out, {B, p}, "[B, p]");
  const Device device = device_of(fn, "y", y);
  check_same_device(fn, "out", out, "y", y);
  check_contiguous(fn, "y", y);
  check_contiguous(fn, "out", out);
  check_no_overlap(fn, "out", out, "y", y);
  const grass::SjltParams params = sjlt_params(k, s, seed);
  const auto* yp = static_cast<const float*>(y.data());
  float* xp = static_cast<float*>(out.data());
  require_cuda_build(fn, device);
  nb::gil_scoped_release release;
  if (device == Device::CPU) {
    grass::sjlt_transpose_cpu(yp, B, p, xp, params);
  } else {
    GRASS_CUDA_CALL(grass::sjlt_transpose_cuda(yp, B, p, xp, params, as_stream(stream)));
  }
}

void sjlt_codes(int64_t column_begin, const Out& bucket, const Out& sign, int64_t k, int64_t s,
                uint64_t seed) {
  const char* fn = "_C.sjlt_codes";
  check_ndim(fn, "bucket", bucket, 2, "[count, s]");
  check_dtype<int64_t>(fn, "bucket", bucket);
  check_dtype<int8_t>(fn, "sign", sign);
  const int64_t count = dim(bucket, 0);
  check_shape(fn, "bucket", bucket, {count, s}, "[count, s]");
  check_shape(fn, "sign", sign, {count, s}, "[count, s]");
  check_cpu(fn, "bucket", bucket);
  check_cpu(fn, "sign", sign);
  check_contiguous(fn, "bucket", bucket);
  check_contiguous(fn, "sign", sign);
  if (column_begin < 0) fail(fn, "column_begin must be >= 0, got %lld", (long long)column_begin);
  const grass::SjltParams params = sjlt_params(k, s, seed);
  auto* bp = static_cast<int64_t*>(bucket.data());
  auto* sp = static_cast<int8_t*>(sign.data());
  nb::gil_scoped_release release;
  grass::sjlt_codes(column_begin, count, params, bp, sp);
}

// ---------------------------------------------------------------- masks

void mask_indices(int64_t p, const Out& out, uint64_t seed) {
  const char* fn = "_C.mask_indices";
  check_ndim(fn, "out", out, 1, "[k]");
  check_dtype<int64_t>(fn, "out", out);
  check_cpu(fn, "out", out);
  check_contiguous(fn, "out", out);
  const int64_t k = dim(out, 0);
  auto* op = static_cast<int64_t*>(out.data());
  nb::gil_scoped_release release;
  grass::random_mask_indices(p, k, seed, op);
}

void mask_gather(const In& x, const In& idx, const Out& out, [[maybe_unused]] uintptr_t stream) {
  const char* fn = "_C.mask_gather";
  check_ndim(fn, "x", x, 2, "[B, p]");
  check_ndim(fn, "idx", idx, 1, "[kp]");
  const DType dtype = float_dtype(fn, "x", x, true);
  check_dtype<int64_t>(fn, "idx", idx);
  const int64_t B = dim(x, 0), p = dim(x, 1), kp = dim(idx, 0);
  check_shape(fn, "out", out, {B, kp}, "[B, kp]");
  if (out.dtype() != x.dtype())
    fail(fn, "out must have x's dtype %s, got %s", dtype_str(x.dtype()).c_str(),
         dtype_str(out.dtype()).c_str());
  const Device device = device_of(fn, "x", x);
  check_same_device(fn, "idx", idx, "x", x);
  check_same_device(fn, "out", out, "x", x);
  check_contiguous(fn, "x", x);
  check_contiguous(fn, "idx", idx);
  check_contiguous(fn, "out", out);
  check_no_overlap(fn, "out", out, "x", x);
  check_no_overlap(fn, "out", out, "idx", idx);
  const auto* ip = static_cast<const int64_t*>(idx.data());
  void* op = out.data();
  require_cuda_build(fn, device);
  nb::gil_scoped_release release;
  if (device == Device::CPU) {
    grass::mask_gather_cpu(x.data(), dtype, B, p, ip, kp, op);
  } else {
    GRASS_CUDA_CALL(
        grass::mask_gather_cuda(x.data(), dtype, B, p, ip, kp, op, as_stream(stream)));
  }
}

void masked_sjlt(const In& x, const In& idx, const Out& out, int64_t k, int64_t s, uint64_t seed,
                 [[maybe_unused]] bool deterministic, [[maybe_unused]] uintptr_t stream) {
  const char* fn = "_C.masked_sjlt";
  check_ndim(fn, "x", x, 2, "[B, p]");
  check_ndim(fn, "idx", idx, 1, "[kp]");
  const DType dtype = float_dtype(fn, "x", x, false);
  check_dtype<int64_t>(fn, "idx", idx);
  const int64_t B = dim(x, 0), p = dim(x, 1), kp = dim(idx, 0);
  check_shape(fn, "out", out, {B, k}, "[B, k]");
  check_dtype<float>(fn, "out", out);
  const Device device = device_of(fn, "x", x);
  check_same_device(fn, "idx", idx, "x", x);
  check_same_device(fn, "out", out, "x", x);
  check_contiguous(fn, "x", x);
  check_contiguous(fn, "idx", idx);
  check_contiguous(fn, "out", out);
  check_no_overlap(fn, "out", out, "x", x);
  check_no_overlap(fn, "out", out, "idx", idx);
  const grass::SjltParams params = sjlt_params(k, s, seed);
  const auto* ip = static_cast<const int64_t*>(idx.data());
  float* y = static_cast<float*>(out.data());
  require_cuda_build(fn, device);
  nb::gil_scoped_release release;
  if (device == Device::CPU) {
    grass::masked_sjlt_cpu(x.data(), dtype, B, p, ip, kp, y, params);
  } else {
    GRASS_CUDA_CALL(grass::masked_sjlt_cuda(x.data(), dtype, B, p, ip, kp, y, params,
                                            deterministic, as_stream(stream)));
  }
}

// ---------------------------------------------------------------- FJLT

void fjlt(const In& x, const Out& out, uint64_t seed, [[maybe_unused]] uintptr_t stream) {
  const char* fn = "_C.fjlt";
  check_ndim(fn, "x", x, 2, "[B, p]");
  check_ndim(fn, "out", out, 2, "[B, k]");
  const DType dtype = float_dtype(fn, "x", x, false);
  check_dtype<float>(fn, "out", out);
  const int64_t B = dim(x, 0), p = dim(x, 1), k = dim(out, 1);
  check_shape(fn, "out", out, {B, k}, "[B, k]");
  const Device device = device_of(fn, "x", x);
  check_same_device(fn, "out", out, "x", x);
  check_contiguous(fn, "x", x);
  check_contiguous(fn, "out", out);
  check_no_overlap(fn, "out", out, "x", x);
  float* y = static_cast<float*>(out.data());
  require_cuda_build(fn, device);
  nb::gil_scoped_release release;
  if (device == Device::CPU) {
    grass::fjlt_cpu(x.data(), dtype, B, p, y, k, seed);
  } else {
    GRASS_CUDA_CALL(grass::fjlt_cuda(x.data(), dtype, B, p, y, k, seed, as_stream(stream)));
  }
}

void fjlt_signs(int64_t p, uint64_t seed, const Out& out) {
  const char* fn = "_C.fjlt_signs";
  check_shape(fn, "out", out, {p}, "[p]");
  check_dtype<int8_t>(fn, "out", out);
  check_cpu(fn, "out", out);
  check_contiguous(fn, "out", out);
  auto* op = static_cast<int8_t*>(out.data());
  nb::gil_scoped_release release;
  grass::fjlt_signs(p, seed, op);
}

void fjlt_rows(int64_t p, uint64_t seed, const Out& out) {
  const char* fn = "_C.fjlt_rows";
  check_ndim(fn, "out", out, 1, "[k]");
  check_dtype<int64_t>(fn, "out", out);
  check_cpu(fn, "out", out);
  check_contiguous(fn, "out", out);
  const int64_t k = dim(out, 0);
  auto* op = static_cast<int64_t*>(out.data());
  nb::gil_scoped_release release;
  grass::fjlt_rows(p, k, seed, op);
}

// ---------------------------------------------------------------- Kronecker, FactGraSS

// a [B, T, d_in] and g [B, T, d_out] with one dtype on one device.
grass::KronShape kron_shape(const char* fn, const In& a, const In& g, bool bias, DType* dtype) {
  check_ndim(fn, "a", a, 3, "[B, T, d_in]");
  check_ndim(fn, "g", g, 3, "[B, T, d_out]");
  *dtype = float_dtype(fn, "a", a, false);
  if (g.dtype() != a.dtype())
    fail(fn, "g must have a's dtype %s, got %s", dtype_str(a.dtype()).c_str(),
         dtype_str(g.dtype()).c_str());
  grass::KronShape shape;
  shape.B = dim(a, 0);
  shape.T = dim(a, 1);
  shape.d_in = dim(a, 2);
  shape.d_out = dim(g, 2);
  shape.bias = bias;
  check_shape(fn, "g", g, {shape.B, shape.T, shape.d_out}, "[B, T, d_out] (B, T from a)");
  check_same_device(fn, "g", g, "a", a);
  check_contiguous(fn, "a", a);
  check_contiguous(fn, "g", g);
  return shape;
}

void kron(const In& a, const In& g, const Out& out, bool bias, [[maybe_unused]] uintptr_t stream) {
  const char* fn = "_C.kron";
  DType dtype;
  const grass::KronShape shape = kron_shape(fn, a, g, bias, &dtype);
  check_shape(fn, "out", out, {shape.B, shape.d_out * shape.d_in_aug()},
              "[B, d_out * (d_in + bias)]");
  check_dtype<float>(fn, "out", out);
  const Device device = device_of(fn, "a", a);
  check_same_device(fn, "out", out, "a", a);
  check_contiguous(fn, "out", out);
  check_no_overlap(fn, "out", out, "a", a);
  check_no_overlap(fn, "out", out, "g", g);
  float* op = static_cast<float*>(out.data());
  require_cuda_build(fn, device);
  nb::gil_scoped_release release;
  if (device == Device::CPU) {
    grass::kron_cpu(a.data(), g.data(), dtype, shape, op);
  } else {
    GRASS_CUDA_CALL(grass::kron_cuda(a.data(), g.data(), dtype, shape, op, as_stream(stream)));
  }
}

void factgrass(const In& a, const In& g, const In& idx_in, const In& idx_out, const Out& out,
               int64_t k, bool bias, int64_t s, uint64_t seed, [[maybe_unused]] bool deterministic,
               [[maybe_unused]] uintptr_t stream) {
  const char* fn = "_C.factgrass";
  DType dtype;
  const grass::KronShape shape = kron_shape(fn, a, g, bias, &dtype);
  check_ndim(fn, "idx_in", idx_in, 1, "[k_in]");
  check_ndim(fn, "idx_out", idx_out, 1, "[k_out]");
  check_dtype<int64_t>(fn, "idx_in", idx_in);
  check_dtype<int64_t>(fn, "idx_out", idx_out);
  check_shape(fn, "out", out, {shape.B, k}, "[B, k]");
  check_dtype<float>(fn, "out", out);
  const Device device = device_of(fn, "a", a);
  check_same_device(fn, "idx_in", idx_in, "a", a);
  check_same_device(fn, "idx_out", idx_out, "a", a);
  check_same_device(fn, "out", out, "a", a);
  check_contiguous(fn, "idx_in", idx_in);
  check_contiguous(fn, "idx_out", idx_out);
  check_contiguous(fn, "out", out);
  check_no_overlap(fn, "out", out, "a", a);
  check_no_overlap(fn, "out", out, "g", g);
  check_no_overlap(fn, "out", out, "idx_in", idx_in);
  check_no_overlap(fn, "out", out, "idx_out", idx_out);
  const grass::SjltParams params = sjlt_params(k, s, seed);
  const int64_t k_in = dim(idx_in, 0), k_out = dim(idx_out, 0);
  const auto* ii = static_cast<const int64_t*>(idx_in.data());
  const auto* io = static_cast<const int64_t*>(idx_out.data());
  float* y = static_cast<float*>(out.data());
  require_cuda_build(fn, device);
  nb::gil_scoped_release release;
  if (device == Device::CPU) {
    grass::factgrass_cpu(a.data(), g.data(), dtype, shape, ii, k_in, io, k_out, y, params);
  } else {
    GRASS_CUDA_CALL(grass::factgrass_cuda(a.data(), g.data(), dtype, shape, ii, k_in, io, k_out,
                                          y, params, deterministic, as_stream(stream)));
  }
}

// ---------------------------------------------------------------- Fisher, Cholesky (CPU)

// block_sizes int64 [L] on the CPU; returns sum_l k_l^2 (the packed size) and K = sum k_l.
int64_t packed_blocks(const char* fn, const In& block_sizes, int64_t* K) {
  check_ndim(fn, "block_sizes", block_sizes, 1, "[L]");
  check_dtype<int64_t>(fn, "block_sizes", block_sizes);
  check_cpu(fn, "block_sizes", block_sizes);
  check_contiguous(fn, "block_sizes", block_sizes);
  const auto* bs = static_cast<const int64_t*>(block_sizes.data());
  const int64_t L = dim(block_sizes, 0);
  const int64_t packed = grass::ifvp_packed_size(bs, L);
  *K = 0;
  for (int64_t l = 0; l < L; ++l) *K += bs[l];
  return packed;
}

void fisher_accumulate(const In& G, const In& block_sizes, const Out& F) {
  const char* fn = "_C.fisher_accumulate";
  int64_t K = 0;
  const int64_t packed = packed_blocks(fn, block_sizes, &K);
  check_ndim(fn, "G", G, 2, "[N, K]");
  const DType dtype = float_dtype(fn, "G", G, true);
  if (dtype != DType::F32 && dtype != DType::F64)
    fail(fn, "G must be float32 or float64, got %s", grass::dtype_name(dtype));
  const int64_t N = dim(G, 0);
  check_shape(fn, "G", G, {N, K}, "[N, K = sum(block_sizes)]");
  check_shape(fn, "F", F, {packed}, "[sum(block_sizes**2)]");
  check_dtype<double>(fn, "F", F);
  check_cpu(fn, "G", G);
  check_cpu(fn, "F", F);
  check_contiguous(fn, "G", G);
  check_contiguous(fn, "F", F);
  check_no_overlap(fn, "F", F, "G", G);
  const auto* bs = static_cast<const int64_t*>(block_sizes.data());
  const int64_t L = dim(block_sizes, 0);
  auto* fp = static_cast<double*>(F.data());
  nb::gil_scoped_release release;
  grass::fisher_accumulate_cpu(G.data(), dtype, N, K, bs, L, fp);
}

void cholesky_factor(const Out& F, const In& block_sizes, const In& damping) {
  const char* fn = "_C.cholesky_factor";
  int64_t K = 0;
  const int64_t packed = packed_blocks(fn, block_sizes, &K);
  const int64_t L = dim(block_sizes, 0);
  check_shape(fn, "F", F, {packed}, "[sum(block_sizes**2)]");
  check_dtype<double>(fn, "F", F);
  check_shape(fn, "damping", damping, {L}, "[L]");
  check_dtype<double>(fn, "damping", damping);
  check_cpu(fn, "F", F);
  check_cpu(fn, "damping", damping);
  check_contiguous(fn, "F", F);
  check_contiguous(fn, "damping", damping);
  const auto* bs = static_cast<const int64_t*>(block_sizes.data());
  const auto* dp = static_cast<const double*>(damping.data());
  auto* fp = static_cast<double*>(F.data());
  nb::gil_scoped_release release;
  grass::cholesky_factor_cpu(fp, bs, L, dp);
}

void cholesky_solve(const In& Lmat, const In& block_sizes, const In& V, const Out& X) {
  const char* fn = "_C.cholesky_solve";
  int64_t K = 0;
  const int64_t packed = packed_blocks(fn, block_sizes, &K);
  const int64_t L = dim(block_sizes, 0);
  check_shape(fn, "L", Lmat, {packed}, "[sum(block_sizes**2)]");
  check_dtype<double>(fn, "L", Lmat);
  check_ndim(fn, "V", V, 2, "[M, K]");
  const DType dtype = float_dtype(fn, "V", V, true);
  if (dtype != DType::F32 && dtype != DType::F64)
    fail(fn, "V must be float32 or float64, got %s", grass::dtype_name(dtype));
  const int64_t M = dim(V, 0);
  check_shape(fn, "V", V, {M, K}, "[M, K = sum(block_sizes)]");
  check_shape(fn, "out", X, {M, K}, "[M, K]");
  if (X.dtype() != V.dtype())
    fail(fn, "out must have V's dtype %s, got %s", dtype_str(V.dtype()).c_str(),
         dtype_str(X.dtype()).c_str());
  check_cpu(fn, "L", Lmat);
  check_cpu(fn, "V", V);
  check_cpu(fn, "out", X);
  check_contiguous(fn, "L", Lmat);
  check_contiguous(fn, "V", V);
  check_contiguous(fn, "out", X);
  // out may be V itself (solved in place), but not a partial overlap.
  if (static_cast<const void*>(X.data()) != static_cast<const void*>(V.data()))
    check_no_overlap(fn, "out", X, "V", V);
  check_no_overlap(fn, "out", X, "L", Lmat);
  const auto* bs = static_cast<const int64_t*>(block_sizes.data());
  const auto* lp = static_cast<const double*>(Lmat.data());
  void* xp = X.data();
  nb::gil_scoped_release release;
  grass::cholesky_solve_cpu(lp, bs, L, V.data(), dtype, M, K, xp);
}

// ---------------------------------------------------------------- build and runtime

nb::dict build_info() {
  const grass::BuildInfo info = grass::build_info();
  nb::dict d;
  d["version"] = info.version;
  d["cuda_compiled"] = info.cuda_compiled;
  d["openmp_max_threads"] = info.openmp_max_threads;
  d["simd"] = info.simd;
  d["compiler"] = info.compiler;
  return d;
}

nb::dict cuda_runtime_status() {
  const grass::CudaStatus status = grass::cuda_runtime_status();
  nb::dict d;
  d["available"] = status.available;
  d["device_count"] = status.device_count;
  d["reason"] = status.reason;
  return d;
}

}  // namespace

NB_MODULE(_C, m) {
  m.doc() =
      "grass._C: the native kernels of grass. Use grass.ops, which checks arguments with the "
      "caller's names, allocates outputs and passes torch's current CUDA stream.";

  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const grass::Error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });

  m.attr("__version__") = grass::build_info().version;

  m.def("sjlt", &sjlt, "x"_a.noconvert(), "out"_a.noconvert(), "k"_a, "s"_a, "seed"_a,
        "deterministic"_a, "stream"_a,
        "out [B, k] float32 = S x for x [B, p] (float32/float16/bfloat16).");
  m.def("sjlt_csr", &sjlt_csr, "indptr"_a.noconvert(), "indices"_a.noconvert(),
        "values"_a.noconvert(), "out"_a.noconvert(), "p"_a, "k"_a, "s"_a, "seed"_a,
        "deterministic"_a, "stream"_a,
        "out [B, k] = S x for x a CSR matrix [B, p]: indptr int64 [B + 1], indices int64 "
        "[nnz], values [nnz].");
  m.def("sjlt_transpose", &sjlt_transpose, "y"_a.noconvert(), "out"_a.noconvert(), "s"_a,
        "seed"_a, "stream"_a, "out [B, p] float32 = S^T y for y [B, k] float32.");
  m.def("sjlt_codes", &sjlt_codes, "column_begin"_a, "bucket"_a.noconvert(),
        "sign"_a.noconvert(), "k"_a, "s"_a, "seed"_a,
        "Fills bucket int64 [count, s] and sign int8 [count, s] for columns "
        "[column_begin, column_begin + count) (CPU arrays).");
  m.def("mask_indices", &mask_indices, "p"_a, "out"_a.noconvert(), "seed"_a,
        "Fills out int64 [k] (CPU) with k sorted distinct indices of [0, p).");
  m.def("mask_gather", &mask_gather, "x"_a.noconvert(), "idx"_a.noconvert(),
        "out"_a.noconvert(), "stream"_a, "out [B, kp] = x[:, idx], x's dtype.");
  m.def("masked_sjlt", &masked_sjlt, "x"_a.noconvert(), "idx"_a.noconvert(),
        "out"_a.noconvert(), "k"_a, "s"_a, "seed"_a, "deterministic"_a, "stream"_a,
        "out [B, k] = S (x[:, idx]) in one pass (GraSS).");
  m.def("fjlt", &fjlt, "x"_a.noconvert(), "out"_a.noconvert(), "seed"_a, "stream"_a,
        "out [B, k] = (1/sqrt(k)) R H D x~ for x [B, p].");
  m.def("fjlt_padded_size", &grass::fjlt_padded_size, "p"_a,
        "The next power of two >= p.");
  m.def("fjlt_signs", &fjlt_signs, "p"_a, "seed"_a, "out"_a.noconvert(),
        "Fills out int8 [p] (CPU) with the FJLT's signs D.");
  m.def("fjlt_rows", &fjlt_rows, "p"_a, "seed"_a, "out"_a.noconvert(),
        "Fills out int64 [k] (CPU) with the FJLT's sampled Hadamard rows R.");
  m.def("kron", &kron, "a"_a.noconvert(), "g"_a.noconvert(), "out"_a.noconvert(), "bias"_a,
        "stream"_a,
        "out [B, d_out * (d_in + bias)] = sum_t g[b, t] (x) [a[b, t], 1] for a [B, T, d_in], "
        "g [B, T, d_out].");
  m.def("factgrass", &factgrass, "a"_a.noconvert(), "g"_a.noconvert(), "idx_in"_a.noconvert(),
        "idx_out"_a.noconvert(), "out"_a.noconvert(), "k"_a, "bias"_a, "s"_a, "seed"_a,
        "deterministic"_a, "stream"_a,
        "out [B, k] = S kron(a~[:, :, idx_in], g[:, :, idx_out]) without the intermediate.");
  m.def("fisher_accumulate", &fisher_accumulate, "G"_a.noconvert(),
        "block_sizes"_a.noconvert(), "F"_a.noconvert(),
        "F (packed float64) += G_l^T G_l per block, G [N, K] float32/float64 (CPU).");
  m.def("cholesky_factor", &cholesky_factor, "F"_a.noconvert(), "block_sizes"_a.noconvert(),
        "damping"_a.noconvert(),
        "In place: F_l + damping[l] I = L_l L_l^T per block (CPU, float64).");
  m.def("cholesky_solve", &cholesky_solve, "L"_a.noconvert(), "block_sizes"_a.noconvert(),
        "V"_a.noconvert(), "out"_a.noconvert(),
        "out[:, block l] = (L_l L_l^T)^-1 V[:, block l] (CPU; out may be V).");
  m.def("build_info", &build_info,
        "What this build contains: version, cuda_compiled, openmp_max_threads, simd, "
        "compiler.");
  m.def("cuda_runtime_status", &cuda_runtime_status,
        "Whether CUDA can run here: available, device_count, reason (never raises).");
}
