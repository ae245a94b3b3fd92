// The dispatch table of one CPU level (cpu_dispatch.h). Compiled once per level together
// with the kernel sources, with GRASS_CPU_TABLE naming the table (grass_cpu_kernels_<level>).
#include "cpu_dispatch.h"

#if !defined(GRASS_CPU_TABLE)
#error "cpu_table.cpp is compiled once per CPU level with -DGRASS_CPU_TABLE=grass_cpu_kernels_<level>"
#endif

#define GRASS_CPU_ADDRESS(name) &::grass::name,
extern "C" const grass::detail::CpuKernels GRASS_CPU_TABLE = {GRASS_CPU_FUNCTIONS(GRASS_CPU_ADDRESS)};
