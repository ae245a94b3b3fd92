// Embedding grass in native code: sketch a few rows with SJLT and check the norm.
// Built twice by CI: once with add_subdirectory(grass), once with find_package(grass).
#include <grass/grass.h>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  const int64_t B = 4, p = 10000;
  grass::SjltParams params;
  params.k = 512;
  params.s = 2;
  params.seed = 42;

  std::vector<float> x(B * p);
  for (int64_t i = 0; i < B * p; ++i) x[i] = std::sin(0.001 * static_cast<double>(i));
  std::vector<float> y(B * params.k);
  grass::sjlt_cpu(x.data(), grass::DType::F32, B, p, y.data(), params);

  for (int64_t b = 0; b < B; ++b) {
    double nx = 0, ny = 0;
    for (int64_t j = 0; j < p; ++j) nx += double(x[b * p + j]) * x[b * p + j];
    for (int64_t j = 0; j < params.k; ++j) ny += double(y[b * params.k + j]) * y[b * params.k + j];
    std::printf("row %lld: |Sx|^2 / |x|^2 = %.3f\n", static_cast<long long>(b), ny / nx);
  }
  auto info = grass::build_info();
  std::printf("grass %s, CUDA kernels compiled: %s, simd %s\n", info.version.c_str(),
              info.cuda_compiled ? "yes" : "no", info.simd.c_str());
  return 0;
}
