// Internal to grass_core: runtime CPU dispatch of the kernel sources (docs/portability.md).
//
// With GRASS_CPU_DISPATCH the kernel sources (sjlt.cpp, mask.cpp, masked_sjlt.cpp,
// fjlt.cpp, kron.cpp, factgrass.cpp, ifvp.cpp) are compiled once per CPU level, each time
// with that level's flags and with cpu_table.cpp, which takes the addresses of the
// level's functions into a table named grass_cpu_kernels_<level>. Each level is then
// linked into one relocatable object whose only global symbol is that table, so nothing
// compiled for one level (an inline helper, a template, a copy of a std:: function) can
// be picked by the linker for another. cpu_dispatch.cpp defines the public functions of
// those headers as one-line forwarders through the table of the level chosen at load time.
#pragma once

#include <string>

#include "grass/factgrass.h"
#include "grass/fjlt.h"
#include "grass/ifvp.h"
#include "grass/kron.h"
#include "grass/mask.h"
#include "grass/masked_sjlt.h"
#include "grass/sjlt.h"

// Every public function the kernel sources define: the dispatch table's entries.
#define GRASS_CPU_FUNCTIONS(X) \
  X(check_sjlt_params)         \
  X(sjlt_codes)                \
  X(sjlt_cpu)                  \
  X(sjlt_csr_cpu)              \
  X(sjlt_transpose_cpu)        \
  X(random_mask_indices)       \
  X(check_indices)             \
  X(mask_gather_cpu)           \
  X(masked_sjlt_cpu)           \
  X(fjlt_padded_size)          \
  X(fjlt_signs)                \
  X(fjlt_rows)                 \
  X(fjlt_cpu)                  \
  X(kron_cpu)                  \
  X(factgrass_cpu)             \
  X(ifvp_packed_size)          \
  X(fisher_accumulate_cpu)     \
  X(cholesky_factor_cpu)       \
  X(cholesky_solve_cpu)

namespace grass {
namespace detail {

struct CpuKernels {
#define GRASS_CPU_ENTRY(name) decltype(&::grass::name) name;
  GRASS_CPU_FUNCTIONS(GRASS_CPU_ENTRY)
#undef GRASS_CPU_ENTRY
};

// The level the kernels run at: chosen on first use from the CPU and the environment
// variable GRASS_CPU_CAPABILITY. `error` is non-empty when no level can run (an unknown
// or unsupported forced level, or a CPU below the baseline); the kernels then throw it.
struct CpuLevelChoice {
  std::string compiled;  // the levels built in, best last: "baseline,avx2,avx512"; "native"
  std::string chosen;    // one of them, or "" with error set
  std::string supported; // the compiled levels this CPU can run
  std::string error;
};
const CpuLevelChoice& cpu_level_choice();

}  // namespace detail
}  // namespace grass
