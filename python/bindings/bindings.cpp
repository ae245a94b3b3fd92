// grass._C: the one nanobind module, a table of ops over one generic adapter.
//
// The adapter (class Call) turns DLPack arrays (torch CPU/CUDA tensors, numpy arrays)
// into checked views and is the only place on the Python path that checks arrays:
// rank, dtype, device (one device per call), C-contiguity from the strides, and that an
// output shares no memory with an input. It allocates missing outputs through the
// caller's allocator (grass.ops passes one that calls torch.empty on the input's
// device), releases the GIL and dispatches to the CPU kernel or its CUDA twin on the
// stream the caller passes as an integer. Each op below only names its arrays and says
// which core function to call. Arrays are never converted (a copied out= would lose the
// result): a wrong dtype or layout is a ValueError naming the argument.
//
// Scalar ranges that depend on array shapes (k, s, p, block sizes) are checked here
// too, with the messages grass.ops users see (grass.ops renames "grass._C.<op>" to
// "grass.ops.<op>"); the core checks them again because it must stay safe when called
// from C++. grass::Error -> ValueError.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <vector>

#include "grass/grass.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using grass::DType;
using Array = nb::ndarray<nb::ro>;  // inputs: read-only views (read-only numpy is fine)

// ---------------------------------------------------------------- element types

// Element types as bits, so that an argument can accept a set of them.
enum Kind : unsigned { kF32 = 1u, kF16 = 2u, kBF16 = 4u, kF64 = 8u, kI64 = 16u, kI8 = 32u };
constexpr unsigned kSketch = kF32 | kF16 | kBF16;  // what the sketches read
constexpr unsigned kGather = kSketch | kF64;       // a byte gather reads anything
constexpr unsigned kFisher = kF32 | kF64;          // the iFVP works in float64
constexpr Kind kKinds[] = {kF32, kF16, kBF16, kF64, kI64, kI8};

const char* kind_name(unsigned kind) {
  switch (kind) {
    case kF32: return "float32";
    case kF16: return "float16";
    case kBF16: return "bfloat16";
    case kF64: return "float64";
    case kI64: return "int64";
    case kI8: return "int8";
  }
  return "?";
}

unsigned kind_of(nb::dlpack::dtype t) {
  using Code = nb::dlpack::dtype_code;
  if (t.lanes != 1) return 0;
  if (t.code == (uint8_t)Code::Float)
    return t.bits == 32 ? unsigned{kF32} : t.bits == 16 ? unsigned{kF16} : t.bits == 64 ? unsigned{kF64} : 0u;
  if (t.code == (uint8_t)Code::Bfloat) return t.bits == 16 ? unsigned{kBF16} : 0u;
  if (t.code == (uint8_t)Code::Int) return t.bits == 64 ? unsigned{kI64} : t.bits == 8 ? unsigned{kI8} : 0u;
  return 0;
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

// "float32, float16 or bfloat16"
std::string kinds_str(unsigned kinds) {
  std::vector<const char*> names;
  for (Kind k : kKinds)
    if (kinds & k) names.push_back(kind_name(k));
  std::string s;
  for (size_t i = 0; i < names.size(); ++i)
    s += std::string(i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + names[i];
  return s;
}

DType dtype_of(unsigned kind) {
  return kind == kF16 ? DType::F16 : kind == kBF16 ? DType::BF16 : kind == kF64 ? DType::F64
                                                                                : DType::F32;
}

std::string tuple_str(const std::vector<int64_t>& v) {
  std::string s = "(";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + (v.size() == 1 ? ",)" : ")");
}

std::string device_str(int type, int id) {
  if (type == nb::device::cpu::value) return "cpu";
  if (type == nb::device::cuda::value) return "cuda:" + std::to_string(id);
  return "DLPack device type " + std::to_string(type);
}

// ---------------------------------------------------------------- the adapter

// A checked array: what the kernels need, nothing of nanobind.
struct View {
  const char* name = "";
  void* data = nullptr;
  unsigned kind = 0;
  std::vector<int64_t> shape;
  size_t nbytes = 0;

  int64_t dim(size_t i) const { return shape[i]; }
  int64_t size() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  DType dtype() const { return dtype_of(kind); }
  template <typename T> T* as() const { return static_cast<T*>(data); }
};

// One call of one op: collects its checked arrays, then runs the kernel.
class Call {
 public:
  Call(const char* op, nb::handle alloc, uintptr_t stream)
      : op_(op), alloc_(alloc), stream_(stream) {}

  template <typename... Args>
  [[noreturn]] void fail(const char* fmt, Args... args) const {
    grass::detail::throw_error((std::string("_C.") + op_).c_str(), fmt, args...);
  }

  // An input array of one of `ndims` ranks and one of `kinds`, on the call's device (the
  // first array fixes it), C-contiguous. `layout` names its dimensions, e.g. "[B, p]".
  View in(const char* name, const Array& a, std::initializer_list<size_t> ndims,
          const char* layout, unsigned kinds) {
    View v = view(name, a.data(), a);
    check_rank(v, ndims, layout);
    check_kind(v, a.dtype(), kinds, false);
    check_device(v, a.device_type(), a.device_id());
    check_contiguous(v, a, false);
    inputs_.push_back(v);
    return v;
  }

  // The output: the caller's array (checked like an input, and sharing no memory with any
  // input unless it is exactly `may_be`), or a new one from the allocator (zeroed if asked).
  View out(const char* name, nb::handle given, const std::vector<int64_t>& shape, Kind kind,
           const View* may_be = nullptr, bool zero_new = false, const char* shape_note = nullptr) {
    nb::object obj;
    if (given.is_none()) {
      if (!alloc_.is_valid() || alloc_.is_none())
        fail("%s is None and no allocator was passed", name);
      nb::list dims;
      for (int64_t d : shape) dims.append(d);
      obj = alloc_(dims, kind_name(kind));
      if (zero_new) obj.attr("__setitem__")(nb::ellipsis(), 0);
    } else {
      obj = nb::borrow(given);
    }
    nb::ndarray<> a;
    if (!nb::try_cast(obj, a, false))
      fail("%s must be a writable array (a torch.Tensor or numpy.ndarray), got %s", name,
           nb::type_name(obj.type()).c_str());
    View v = view(name, a.data(), a);
    if (v.shape != shape && shape_note != nullptr)
      fail("%s must be %s, got shape %s", name, shape_note, tuple_str(v.shape).c_str());
    if (v.shape != shape)
      fail("%s must have shape %s, got %s", name, tuple_str(shape).c_str(),
           tuple_str(v.shape).c_str());
    check_kind(v, a.dtype(), kind, true);
    check_device(v, a.device_type(), a.device_id());
    check_contiguous(v, a, true);
    for (const View& in : inputs_)
      if (may_be == nullptr || in.data != may_be->data || v.data != may_be->data)
        check_no_overlap(v, in);
    outs_.push_back(obj);
    out_views_.push_back(v);
    return v;
  }

  bool on_cpu() const { return device_type_ == nb::device::cpu::value; }

  // Arrays the CUDA twins do not take (host tables, the CPU iFVP).
  void require_cpu(const char* why) const {
    if (device_type_ != nb::device::cpu::value)
      fail("%s must be a CPU array, got %s; %s", first_, device_str(device_type_, device_id_).c_str(),
           why);
  }

  // Writes zeros into the outputs (degenerate shapes the kernels refuse: T = 0, ...).
  nb::object zero() {
    for (nb::object& o : outs_) o.attr("__setitem__")(nb::ellipsis(), 0);
    return result();
  }

  // Runs cpu() or cuda(stream) without the GIL; skipped when every output is empty.
  template <typename Cpu, typename Cuda>
  nb::object run(Cpu&& cpu, [[maybe_unused]] Cuda&& cuda) {
    bool empty = true;
    for (const View& v : out_views_) empty = empty && v.size() == 0;
    if (!empty) {
      const bool on_cuda = device_type_ == nb::device::cuda::value;
#if !defined(GRASS_WITH_CUDA)
      if (on_cuda) fail("got CUDA arrays, but %s", grass::cuda_runtime_status().reason.c_str());
#endif
      nb::gil_scoped_release release;
      if (!on_cuda) {
        cpu();
      } else {
#if defined(GRASS_WITH_CUDA)
        cuda(reinterpret_cast<void*>(stream_));
#endif
      }
    }
    return result();
  }

  nb::object result() const {
    if (outs_.size() == 1) return outs_[0];
    nb::list l;
    for (const nb::object& o : outs_) l.append(o);
    return nb::steal(PyList_AsTuple(l.ptr()));
  }

 private:
  template <typename A>
  View view(const char* name, const void* data, const A& a) const {
    View v;
    v.name = name;
    v.data = const_cast<void*>(data);
    v.kind = kind_of(a.dtype());
    for (size_t i = 0; i < a.ndim(); ++i) v.shape.push_back(static_cast<int64_t>(a.shape(i)));
    v.nbytes = a.nbytes();
    return v;
  }

  void check_rank(const View& v, std::initializer_list<size_t> ndims, const char* layout) const {
    std::string want;
    size_t i = 0;
    for (size_t n : ndims) {
      if (v.shape.size() == n) return;
      want += (i++ ? " or " : "") + std::to_string(n) + "-D";
    }
    fail("%s must be a %s tensor %s, got shape %s", v.name, want.c_str(), layout,
         tuple_str(v.shape).c_str());
  }

  void check_kind(const View& v, nb::dlpack::dtype t, unsigned kinds, bool written) const {
    if (v.kind & kinds) return;
    std::string hint;
    if (!written && kinds == kI64) hint = std::string(" (convert with ") + v.name + ".long())";
    if (!written && (kinds & kF32)) hint = std::string(" (convert with ") + v.name + ".float())";
    fail("%s must be %s, got %s%s", v.name, kinds_str(kinds).c_str(), dtype_str(t).c_str(),
         hint.c_str());
  }

  void check_device(const View& v, int type, int id) {
    if (type != nb::device::cpu::value && type != nb::device::cuda::value)
      fail("%s must be a CPU or CUDA array, got %s", v.name, device_str(type, id).c_str());
    if (first_ == nullptr) {
      first_ = v.name;
      device_type_ = type;
      device_id_ = id;
    } else if (type != device_type_ || id != device_id_) {
      fail("%s must be on %s's device %s, got %s", v.name, first_,
           device_str(device_type_, device_id_).c_str(), device_str(type, id).c_str());
    }
  }

  // C-contiguous from the strides (in elements); size-1 dimensions may have any stride,
  // as in torch's is_contiguous().
  template <typename A>
  void check_contiguous(const View& v, const A& a, bool written) const {
    if (v.size() == 0) return;
    int64_t expected = 1;
    bool ok = true;
    for (size_t i = a.ndim(); i-- > 0;) {
      if (v.shape[i] != 1 && a.stride(i) != expected) ok = false;
      expected *= v.shape[i];
    }
    if (ok) return;
    std::vector<int64_t> strides;
    for (size_t i = 0; i < a.ndim(); ++i) strides.push_back(a.stride(i));
    const std::string hint = written ? "it is written in place, so pass a contiguous tensor"
                                     : std::string("call ") + v.name + ".contiguous() first";
    fail("%s must be contiguous (C order), got shape %s with strides %s; %s", v.name,
         tuple_str(v.shape).c_str(), tuple_str(strides).c_str(), hint.c_str());
  }

  // The kernels read inputs while writing the output.
  void check_no_overlap(const View& out, const View& in) const {
    if (out.nbytes == 0 || in.nbytes == 0) return;
    const auto* o = static_cast<const uint8_t*>(out.data);
    const auto* i = static_cast<const uint8_t*>(in.data);
    if (o < i + in.nbytes && i < o + out.nbytes)
      fail("%s must not share memory with %s", out.name, in.name);
  }

  const char* op_;
  nb::handle alloc_;
  uintptr_t stream_;
  const char* first_ = nullptr;
  int device_type_ = nb::device::cpu::value;
  int device_id_ = 0;
  std::vector<View> inputs_;
  std::vector<View> out_views_;
  std::vector<nb::object> outs_;
};

// ---------------------------------------------------------------- shared scalar checks

grass::SjltParams sjlt_params(const Call& c, int64_t k, int64_t s, uint64_t seed) {
  if (k < 1 || k > INT32_MAX) c.fail("k must be in [1, 2147483647], got %lld", (long long)k);
  if (s < 1 || s > k)
    c.fail("s must be in [1, %lld] (1 <= s <= k), got %lld", (long long)k, (long long)s);
  grass::SjltParams params;
  params.k = k;
  params.s = s;
  params.seed = seed;
  return params;
}

int64_t fjlt_k(const Call& c, int64_t p, int64_t k) {
  if (p < 1) c.fail("p must be >= 1, got %lld", (long long)p);
  const int64_t P = grass::fjlt_padded_size(p);
  if (k < 1 || k > P)
    c.fail("k must be in [1, %lld] (P = %lld, the next power of two >= p = %lld), got %lld",
           (long long)P, (long long)P, (long long)p, (long long)k);
  return k;
}

std::string packed_note(int64_t packed) {
  return "packed float64 of shape (" + std::to_string(packed) + ",) = (sum(block_sizes**2),)";
}

// block_sizes int64 [L] on the CPU; returns sum_l k_l^2 (the core checks every k_l >= 1).
int64_t packed_size(Call& c, const View& sizes, int64_t* K) {
  c.require_cpu("block_sizes is a host table");
  const int64_t packed = grass::ifvp_packed_size(sizes.as<int64_t>(), sizes.dim(0));
  *K = 0;
  for (int64_t l = 0; l < sizes.dim(0); ++l) *K += sizes.as<int64_t>()[l];
  return packed;
}

// ---------------------------------------------------------------- the ops
// Every op: (arrays..., out, scalars..., stream, alloc) and returns its output(s).

#if defined(GRASS_WITH_CUDA)
#define GRASS_CUDA(body) [&](void* stream) { body; }
#else
#define GRASS_CUDA(body) [](void*) {}
#endif

nb::object sjlt(const Array& x, nb::handle out, int64_t k, int64_t s, uint64_t seed, [[maybe_unused]] bool det,
                uintptr_t stream, nb::handle alloc) {
  Call c("sjlt", alloc, stream);
  const View X = c.in("x", x, {2}, "[B, p]", kSketch);
  const auto prm = sjlt_params(c, k, s, seed);
  const View Y = c.out("out", out, {X.dim(0), k}, kF32);
  return c.run([&] { grass::sjlt_cpu(X.data, X.dtype(), X.dim(0), X.dim(1), Y.as<float>(), prm); },
               GRASS_CUDA(grass::sjlt_cuda(X.data, X.dtype(), X.dim(0), X.dim(1), Y.as<float>(),
                                           prm, det, stream)));
}

nb::object sjlt_csr(const Array& indptr, const Array& indices, const Array& values, nb::handle out,
                    int64_t p, int64_t k, int64_t s, uint64_t seed, [[maybe_unused]] bool det, uintptr_t stream,
                    nb::handle alloc) {
  Call c("sjlt_csr", alloc, stream);
  const View V = c.in("x.values()", values, {1}, "[nnz]", kSketch);
  const View P = c.in("indptr", indptr, {1}, "[B + 1]", kI64);
  const View I = c.in("indices", indices, {1}, "[nnz]", kI64);
  if (P.dim(0) < 1) c.fail("indptr must have B + 1 >= 1 entries, got 0");
  if (I.dim(0) != V.dim(0))
    c.fail("indices and x.values() must have nnz entries each, got %lld and %lld",
           (long long)I.dim(0), (long long)V.dim(0));
  if (p < 0) c.fail("p must be >= 0, got %lld", (long long)p);
  const int64_t B = P.dim(0) - 1, nnz = I.dim(0);
  const auto prm = sjlt_params(c, k, s, seed);
  const View Y = c.out("out", out, {B, k}, kF32);
  // The core checks indptr[0] == 0, that it is non-decreasing and the column indices, but
  // cannot know nnz: an indptr[B] beyond it would read past indices and values. (CUDA
  // arrays are checked on the device by grass.ops.)
  const int64_t* ip = P.as<int64_t>();
  if (c.on_cpu() && ip[B] != nnz)
    c.fail("indptr[B] must equal nnz = %lld, got indptr[%lld] = %lld", (long long)nnz,
           (long long)B, (long long)ip[B]);
  return c.run(
      [&] { grass::sjlt_csr_cpu(ip, I.as<int64_t>(), V.data, V.dtype(), B, p, Y.as<float>(), prm); },
      GRASS_CUDA(grass::sjlt_csr_cuda(ip, I.as<int64_t>(), V.data, V.dtype(), B, p, Y.as<float>(),
                                      prm, det, stream)));
}

nb::object sjlt_transpose(const Array& y, nb::handle out, int64_t p, int64_t s, uint64_t seed,
                          uintptr_t stream, nb::handle alloc) {
  Call c("sjlt_transpose", alloc, stream);
  const View Y = c.in("y", y, {2}, "[B, k]", kF32);
  if (Y.dim(1) < 1) c.fail("y must have k >= 1 columns, got shape %s", tuple_str(Y.shape).c_str());
  if (p < 0) c.fail("p must be >= 0, got %lld", (long long)p);
  const auto prm = sjlt_params(c, Y.dim(1), s, seed);
  const View X = c.out("out", out, {Y.dim(0), p}, kF32);
  return c.run([&] { grass::sjlt_transpose_cpu(Y.as<float>(), Y.dim(0), p, X.as<float>(), prm); },
               GRASS_CUDA(grass::sjlt_transpose_cuda(Y.as<float>(), Y.dim(0), p, X.as<float>(),
                                                     prm, stream)));
}

// Host tables (the explicit S, mask and FJLT parameters): CPU outputs only.
nb::object sjlt_codes(int64_t p, int64_t k, int64_t s, uint64_t seed, nb::handle alloc) {
  Call c("sjlt_codes", alloc, 0);
  if (p < 0) c.fail("p must be >= 0, got %lld", (long long)p);
  const auto prm = sjlt_params(c, k, s, seed);
  const View Bk = c.out("bucket", nb::none(), {p, s}, kI64);
  const View Sg = c.out("sign", nb::none(), {p, s}, kI8);
  c.require_cpu("the codes are a host table");
  return c.run([&] { grass::sjlt_codes(0, p, prm, Bk.as<int64_t>(), Sg.as<int8_t>()); },
               [](void*) {});
}

nb::object mask_indices(int64_t p, int64_t k, uint64_t seed, nb::handle alloc) {
  Call c("mask_indices", alloc, 0);
  if (p < 1) c.fail("p must be >= 1, got %lld", (long long)p);
  if (k < 1 || k > p)
    c.fail("k must be in [1, %lld] (1 <= k <= p = %lld), got %lld", (long long)p, (long long)p,
           (long long)k);
  const View O = c.out("out", nb::none(), {k}, kI64);
  c.require_cpu("the mask is drawn on the host");
  return c.run([&] { grass::random_mask_indices(p, k, seed, O.as<int64_t>()); }, [](void*) {});
}

nb::object mask_gather(const Array& x, const Array& idx, nb::handle out, uintptr_t stream,
                       nb::handle alloc) {
  Call c("mask_gather", alloc, stream);
  const View X = c.in("x", x, {2}, "[B, p]", kGather);
  const View I = c.in("idx", idx, {1}, "[k']", kI64);
  const View O = c.out("out", out, {X.dim(0), I.dim(0)}, static_cast<Kind>(X.kind));
  return c.run(
      [&] { grass::mask_gather_cpu(X.data, X.dtype(), X.dim(0), X.dim(1), I.as<int64_t>(), I.dim(0), O.data); },
      GRASS_CUDA(grass::mask_gather_cuda(X.data, X.dtype(), X.dim(0), X.dim(1), I.as<int64_t>(),
                                         I.dim(0), O.data, stream)));
}

nb::object masked_sjlt(const Array& x, const Array& idx, nb::handle out, int64_t k, int64_t s,
                       uint64_t seed, [[maybe_unused]] bool det, uintptr_t stream, nb::handle alloc) {
  Call c("masked_sjlt", alloc, stream);
  const View X = c.in("x", x, {2}, "[B, p]", kSketch);
  const View I = c.in("idx", idx, {1}, "[k']", kI64);
  const auto prm = sjlt_params(c, k, s, seed);
  const View Y = c.out("out", out, {X.dim(0), k}, kF32);
  return c.run([&] { grass::masked_sjlt_cpu(X.data, X.dtype(), X.dim(0), X.dim(1), I.as<int64_t>(),
                                            I.dim(0), Y.as<float>(), prm); },
               GRASS_CUDA(grass::masked_sjlt_cuda(X.data, X.dtype(), X.dim(0), X.dim(1),
                                                  I.as<int64_t>(), I.dim(0), Y.as<float>(), prm,
                                                  det, stream)));
}

nb::object fjlt(const Array& x, nb::handle out, int64_t k, uint64_t seed, uintptr_t stream,
                nb::handle alloc) {
  Call c("fjlt", alloc, stream);
  const View X = c.in("x", x, {2}, "[B, p]", kSketch);
  if (X.dim(1) < 1) c.fail("x must have p >= 1 columns, got shape %s", tuple_str(X.shape).c_str());
  fjlt_k(c, X.dim(1), k);
  const View Y = c.out("out", out, {X.dim(0), k}, kF32);
  return c.run([&] { grass::fjlt_cpu(X.data, X.dtype(), X.dim(0), X.dim(1), Y.as<float>(), k, seed); },
               GRASS_CUDA(grass::fjlt_cuda(X.data, X.dtype(), X.dim(0), X.dim(1), Y.as<float>(), k,
                                           seed, stream)));
}

nb::object fjlt_params(int64_t p, int64_t k, uint64_t seed, nb::handle alloc) {
  Call c("fjlt_params", alloc, 0);
  fjlt_k(c, p, k);
  const View Sg = c.out("signs", nb::none(), {p}, kI8);
  const View R = c.out("rows", nb::none(), {k}, kI64);
  c.require_cpu("the parameters are a host table");
  return c.run([&] {
    grass::fjlt_signs(p, seed, Sg.as<int8_t>());
    grass::fjlt_rows(p, k, seed, R.as<int64_t>());
  }, [](void*) {});
}

// a [B, T, d_in] and g [B, T, d_out] (or both 2-D [B, d]: T = 1) with one dtype.
grass::KronShape kron_shape(Call& c, const Array& a, const Array& g, bool bias, View* A, View* G) {
  *A = c.in("a", a, {2, 3}, "[B, T, d_in] or [B, d_in]", kSketch);
  *G = c.in("g", g, {2, 3}, "[B, T, d_out] or [B, d_out]", kSketch);
  if (A->shape.size() != G->shape.size())
    c.fail("a and g must both be 3-D [B, T, d] or both 2-D [B, d], got shapes %s and %s",
           tuple_str(A->shape).c_str(), tuple_str(G->shape).c_str());
  if (G->kind != A->kind)
    c.fail("g must have a's dtype %s, got %s", kind_name(A->kind), kind_name(G->kind));
  const bool flat = A->shape.size() == 2;
  grass::KronShape shape;
  shape.B = A->dim(0);
  shape.T = flat ? 1 : A->dim(1);
  shape.d_in = A->shape.back();
  shape.d_out = G->shape.back();
  shape.bias = bias;
  if (G->dim(0) != shape.B || (!flat && G->dim(1) != shape.T))
    c.fail("g must match a in B and T, got a %s and g %s", tuple_str(A->shape).c_str(),
           tuple_str(G->shape).c_str());
  if (shape.d_in < 1 || shape.d_out < 1)
    c.fail("a and g must have d_in >= 1 and d_out >= 1 features, got a %s and g %s",
           tuple_str(A->shape).c_str(), tuple_str(G->shape).c_str());
  return shape;
}

nb::object kron(const Array& a, const Array& g, nb::handle out, bool bias, uintptr_t stream,
                nb::handle alloc) {
  Call c("kron", alloc, stream);
  View A, G;
  const grass::KronShape sh = kron_shape(c, a, g, bias, &A, &G);
  const View O = c.out("out", out, {sh.B, sh.d_out * sh.d_in_aug()}, kF32);
  if (sh.T == 0) return c.zero();
  return c.run([&] { grass::kron_cpu(A.data, G.data, A.dtype(), sh, O.as<float>()); },
               GRASS_CUDA(grass::kron_cuda(A.data, G.data, A.dtype(), sh, O.as<float>(), stream)));
}

nb::object factgrass(const Array& a, const Array& g, const Array& idx_in, const Array& idx_out,
                     nb::handle out, int64_t k, bool bias, int64_t s, uint64_t seed, [[maybe_unused]] bool det,
                     uintptr_t stream, nb::handle alloc) {
  Call c("factgrass", alloc, stream);
  View A, G;
  const grass::KronShape sh = kron_shape(c, a, g, bias, &A, &G);
  const View Ii = c.in("idx_in", idx_in, {1}, "[k_in]", kI64);
  const View Io = c.in("idx_out", idx_out, {1}, "[k_out]", kI64);
  const auto prm = sjlt_params(c, k, s, seed);
  const View Y = c.out("out", out, {sh.B, k}, kF32);
  if (sh.T == 0 || Ii.dim(0) == 0 || Io.dim(0) == 0) return c.zero();
  return c.run([&] { grass::factgrass_cpu(A.data, G.data, A.dtype(), sh, Ii.as<int64_t>(), Ii.dim(0),
                                          Io.as<int64_t>(), Io.dim(0), Y.as<float>(), prm); },
               GRASS_CUDA(grass::factgrass_cuda(A.data, G.data, A.dtype(), sh, Ii.as<int64_t>(),
                                                Ii.dim(0), Io.as<int64_t>(), Io.dim(0),
                                                Y.as<float>(), prm, det, stream)));
}

// The iFVP of the C++ core runs on the CPU; grass.precondition owns the CUDA path.
constexpr const char* kCpuIfvp = "the CUDA iFVP is grass.precondition's (torch)";

nb::object fisher_accumulate(const Array& G, const Array& block_sizes, nb::handle F,
                             nb::handle alloc) {
  Call c("fisher_accumulate", alloc, 0);
  const View Gv = c.in("G", G, {2}, "[N, K]", kFisher);
  const View S = c.in("block_sizes", block_sizes, {1}, "[L]", kI64);
  c.require_cpu(kCpuIfvp);
  int64_t K = 0;
  const int64_t packed = packed_size(c, S, &K);
  if (Gv.dim(1) != K)
    c.fail("G must have K = sum(block_sizes) = %lld columns, got shape %s", (long long)K,
           tuple_str(Gv.shape).c_str());
  const View Fv = c.out("F", F, {packed}, kF64, nullptr, /*zero_new=*/true, packed_note(packed).c_str());
  return c.run([&] { grass::fisher_accumulate_cpu(Gv.data, Gv.dtype(), Gv.dim(0), K, S.as<int64_t>(),
                                                  S.dim(0), Fv.as<double>()); },
               [](void*) {});
}

nb::object cholesky_factor(nb::handle F, const Array& block_sizes, const Array& damping,
                           nb::handle alloc) {
  Call c("cholesky_factor", alloc, 0);
  const View S = c.in("block_sizes", block_sizes, {1}, "[L]", kI64);
  const View D = c.in("damping", damping, {1}, "[L]", kF64);
  c.require_cpu(kCpuIfvp);
  int64_t K = 0;
  const int64_t packed = packed_size(c, S, &K);
  if (D.dim(0) != S.dim(0))
    c.fail("damping must have one entry per block (%lld), got %lld", (long long)S.dim(0),
           (long long)D.dim(0));
  const View Fv = c.out("F", F, {packed}, kF64, nullptr, false, packed_note(packed).c_str());
  return c.run([&] { grass::cholesky_factor_cpu(Fv.as<double>(), S.as<int64_t>(), S.dim(0), D.as<double>()); },
               [](void*) {});
}

nb::object cholesky_solve(const Array& L, const Array& block_sizes, const Array& V, nb::handle out,
                          nb::handle alloc) {
  Call c("cholesky_solve", alloc, 0);
  const View Vv = c.in("V", V, {2}, "[M, K]", kFisher);
  const View Lv = c.in("L", L, {1}, "[sum(block_sizes**2)]", kF64);
  const View S = c.in("block_sizes", block_sizes, {1}, "[L]", kI64);
  c.require_cpu(kCpuIfvp);
  int64_t K = 0;
  const int64_t packed = packed_size(c, S, &K);
  if (Lv.dim(0) != packed)
    c.fail("L must be %s, got shape %s", packed_note(packed).c_str(), tuple_str(Lv.shape).c_str());
  if (Vv.dim(1) != K)
    c.fail("V must have K = sum(block_sizes) = %lld columns, got shape %s", (long long)K,
           tuple_str(Vv.shape).c_str());
  // out may be V itself (solved in place), but not a partial overlap.
  const View X = c.out("out", out, Vv.shape, static_cast<Kind>(Vv.kind), &Vv);
  return c.run([&] { grass::cholesky_solve_cpu(Lv.as<double>(), S.as<int64_t>(), S.dim(0), Vv.data,
                                               Vv.dtype(), Vv.dim(0), K, X.data); },
               [](void*) {});
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
  d["cpu_levels"] = info.cpu_levels;
  d["cpu_level"] = info.cpu_level;
  d["cpu_level_error"] = info.cpu_level_error;
  d["cuda_build_note"] = info.cuda_build_note;
  d["cuda_runtime_version"] = info.cuda_runtime_version;
  d["cuda_driver_version"] = info.cuda_driver_version;
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
      "grass._C: the native kernels of grass. Use grass.ops, which converts Python values, "
      "allocates outputs with torch and passes torch's current CUDA stream.";

  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const grass::Error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });

  m.attr("__version__") = grass::build_info().version;

  // The table: every array argument is .noconvert(); `out` is None (allocated with
  // alloc(shape, dtype_name)) or an array written in place; the output(s) are returned.
  const auto none = nb::none();
  m.def("sjlt", &sjlt, "x"_a.noconvert(), "out"_a.none(), "k"_a, "s"_a, "seed"_a, "deterministic"_a, "stream"_a = 0, "alloc"_a = none, "out [B, k] float32 = S x for x [B, p].");
  m.def("sjlt_csr", &sjlt_csr, "indptr"_a.noconvert(), "indices"_a.noconvert(), "values"_a.noconvert(), "out"_a.none(), "p"_a, "k"_a, "s"_a, "seed"_a, "deterministic"_a, "stream"_a = 0, "alloc"_a = none, "out [B, k] = S x for x in CSR: indptr int64 [B + 1], indices int64 [nnz], values [nnz].");
  m.def("sjlt_transpose", &sjlt_transpose, "y"_a.noconvert(), "out"_a.none(), "p"_a, "s"_a, "seed"_a, "stream"_a = 0, "alloc"_a = none, "out [B, p] float32 = S^T y for y [B, k] float32.");
  m.def("sjlt_codes", &sjlt_codes, "p"_a, "k"_a, "s"_a, "seed"_a, "alloc"_a, "(bucket int64 [p, s], sign int8 [p, s]): the explicit S (CPU).");
  m.def("mask_indices", &mask_indices, "p"_a, "k"_a, "seed"_a, "alloc"_a, "int64 [k] (CPU): k sorted distinct indices of [0, p).");
  m.def("mask_gather", &mask_gather, "x"_a.noconvert(), "idx"_a.noconvert(), "out"_a.none(), "stream"_a = 0, "alloc"_a = none, "out [B, k'] = x[:, idx], x's dtype.");
  m.def("masked_sjlt", &masked_sjlt, "x"_a.noconvert(), "idx"_a.noconvert(), "out"_a.none(), "k"_a, "s"_a, "seed"_a, "deterministic"_a, "stream"_a = 0, "alloc"_a = none, "out [B, k] = S (x[:, idx]) in one pass (GraSS).");
  m.def("fjlt", &fjlt, "x"_a.noconvert(), "out"_a.none(), "k"_a, "seed"_a, "stream"_a = 0, "alloc"_a = none, "out [B, k] = (1/sqrt(k)) R H D x~ for x [B, p].");
  m.def("fjlt_params", &fjlt_params, "p"_a, "k"_a, "seed"_a, "alloc"_a, "(signs int8 [p], rows int64 [k]): the FJLT's D and R (CPU).");
  m.def("fjlt_padded_size", &grass::fjlt_padded_size, "p"_a, "The next power of two >= p.");
  m.def("kron", &kron, "a"_a.noconvert(), "g"_a.noconvert(), "out"_a.none(), "bias"_a, "stream"_a = 0, "alloc"_a = none, "out [B, d_out * (d_in + bias)] = sum_t g[b, t] (x) [a[b, t], 1].");
  m.def("factgrass", &factgrass, "a"_a.noconvert(), "g"_a.noconvert(), "idx_in"_a.noconvert(), "idx_out"_a.noconvert(), "out"_a.none(), "k"_a, "bias"_a, "s"_a, "seed"_a, "deterministic"_a, "stream"_a = 0, "alloc"_a = none, "out [B, k] = S kron(a~[..., idx_in], g[..., idx_out]) without the intermediate.");
  m.def("fisher_accumulate", &fisher_accumulate, "G"_a.noconvert(), "block_sizes"_a.noconvert(), "F"_a.none(), "alloc"_a = none, "F (packed float64) += G_l^T G_l per block (CPU).");
  m.def("cholesky_factor", &cholesky_factor, "F"_a, "block_sizes"_a.noconvert(), "damping"_a.noconvert(), "alloc"_a = none, "In place: F_l + damping[l] I = L_l L_l^T per block (CPU; reads the lower triangle).");
  m.def("cholesky_solve", &cholesky_solve, "L"_a.noconvert(), "block_sizes"_a.noconvert(), "V"_a.noconvert(), "out"_a.none(), "alloc"_a = none, "out[:, block l] = (L_l L_l^T)^-1 V[:, block l] (CPU; out may be V).");
  m.def("build_info", &build_info, "What this build contains: version, cuda_compiled, openmp_max_threads, simd, compiler, cpu_levels (compiled), cpu_level (chosen), cpu_level_error, cuda_build_note, cuda_runtime_version, cuda_driver_version.");
  m.def("cuda_runtime_status", &cuda_runtime_status, "Whether CUDA can run here: available, device_count, reason (never raises).");
}
