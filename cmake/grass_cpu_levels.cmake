# CPU levels of the kernel sources (docs/portability.md).
#
# grass_add_cpu_levels(<target> SOURCES <kernel sources...>) adds the kernel sources to
# <target> in one of two ways:
#  - dispatch (x86-64 with GCC or Clang, GNU-style linker and objcopy; GRASS_CPU_DISPATCH):
#    every source is compiled once per level (baseline = x86-64-v2, avx2 = AVX2 + FMA,
#    avx512 = AVX-512 F/BW/DQ/VL/CD), together with cpu_table.cpp; each level's objects
#    are linked into one relocatable object (`-r`, COMDAT groups dissolved) of which only
#    the table grass_cpu_kernels_<level> stays global (objcopy). No inline function,
#    template or std:: instantiation compiled for one level can then be chosen by the
#    linker for another, which is what makes a SIGILL on an older CPU impossible by
#    construction rather than by luck.
#  - one level (GRASS_NATIVE_ARCH, other architectures, or GRASS_CPU_DISPATCH=OFF): the
#    sources are compiled into <target> directly, with -march=native for GRASS_NATIVE_ARCH.
# Every level is compiled with -ffp-contract=off: no level fuses a multiply and an add
# that another level rounds twice, so all levels give bitwise the same results.
include_guard(GLOBAL)

set(GRASS_CPU_FLAGS_baseline -msse4.2 -mpopcnt)
set(GRASS_CPU_FLAGS_avx2 -msse4.2 -mpopcnt -mavx2 -mfma)
set(GRASS_CPU_FLAGS_avx512 -msse4.2 -mpopcnt -mavx2 -mfma -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx512cd)
set(GRASS_CPU_COMMON_FLAGS -ffp-contract=off)

function(grass_add_cpu_levels target)
  cmake_parse_arguments(ARG "" "" "SOURCES" ${ARGN})
  set(x86 OFF)
  if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
    set(x86 ON)
  endif()
  set(gnu_like OFF)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    set(gnu_like ON)
  endif()
  set(can_dispatch OFF)
  if(x86 AND gnu_like AND CMAKE_OBJCOPY AND NOT APPLE AND NOT WIN32)
    set(can_dispatch ON)
  endif()
  if(GRASS_NATIVE_ARCH)
    set(mode native)
  elseif(GRASS_CPU_DISPATCH AND can_dispatch)
    set(mode dispatch)
  else()
    set(mode single)
  endif()

  target_sources(${target} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src/cpu_dispatch.cpp)
  if(NOT mode STREQUAL "dispatch")
    target_sources(${target} PRIVATE ${ARG_SOURCES})
    if(mode STREQUAL "native")
      set(level native)
      set_source_files_properties(${ARG_SOURCES} TARGET_DIRECTORY ${target} PROPERTIES
        COMPILE_OPTIONS "-march=native;${GRASS_CPU_COMMON_FLAGS}")
    elseif(x86 AND gnu_like)
      set(level baseline)
      set_source_files_properties(${ARG_SOURCES} TARGET_DIRECTORY ${target} PROPERTIES
        COMPILE_OPTIONS "${GRASS_CPU_FLAGS_baseline};${GRASS_CPU_COMMON_FLAGS}")
    elseif(gnu_like)
      set(level baseline)
      set_source_files_properties(${ARG_SOURCES} TARGET_DIRECTORY ${target} PROPERTIES
        COMPILE_OPTIONS "${GRASS_CPU_COMMON_FLAGS}")
    else()
      set(level baseline)
    endif()
    set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/src/cpu_dispatch.cpp TARGET_DIRECTORY ${target}
      PROPERTIES COMPILE_DEFINITIONS "GRASS_CPU_SINGLE_LEVEL=\"${level}\"")
    set(GRASS_CPU_LEVELS ${level} PARENT_SCOPE)
    message(STATUS "grass: CPU kernels compiled for one level: ${level}")
    return()
  endif()

  set(levels baseline avx2 avx512)
  set(dispatch_defs GRASS_CPU_DISPATCH=1)
  foreach(level IN LISTS levels)
    set(objlib ${target}_cpu_${level})
    add_library(${objlib} OBJECT ${ARG_SOURCES} ${CMAKE_CURRENT_SOURCE_DIR}/src/cpu_table.cpp)
    set_target_properties(${objlib} PROPERTIES POSITION_INDEPENDENT_CODE ON)
    target_compile_features(${objlib} PRIVATE cxx_std_17)
    # The same include directories, definitions and OpenMP flags as the library itself.
    target_include_directories(${objlib} PRIVATE $<TARGET_PROPERTY:${target},INCLUDE_DIRECTORIES>)
    target_compile_definitions(${objlib} PRIVATE $<TARGET_PROPERTY:${target},COMPILE_DEFINITIONS>
      GRASS_CPU_TABLE=grass_cpu_kernels_${level})
    target_link_libraries(${objlib} PRIVATE OpenMP::OpenMP_CXX)
    target_compile_options(${objlib} PRIVATE -Wall -Wextra -O3 ${GRASS_CPU_FLAGS_${level}} ${GRASS_CPU_COMMON_FLAGS})
    set(combined ${CMAKE_CURRENT_BINARY_DIR}/grass_cpu_${level}.combined.o)
    set(private ${CMAKE_CURRENT_BINARY_DIR}/grass_cpu_${level}.o)
    add_custom_command(OUTPUT ${private}
      COMMAND ${CMAKE_CXX_COMPILER} -r -nostdlib -Wl,--force-group-allocation -o ${combined}
              $<TARGET_OBJECTS:${objlib}>
      COMMAND ${CMAKE_OBJCOPY} --keep-global-symbol=grass_cpu_kernels_${level} ${combined} ${private}
      DEPENDS $<TARGET_OBJECTS:${objlib}>
      COMMAND_EXPAND_LISTS VERBATIM
      COMMENT "grass: CPU level ${level}: one object, only its dispatch table global")
    target_sources(${target} PRIVATE ${private})
    if(NOT level STREQUAL "baseline")
      string(TOUPPER ${level} upper)
      list(APPEND dispatch_defs GRASS_CPU_LEVEL_${upper}=1)
    endif()
  endforeach()
  set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/src/cpu_dispatch.cpp TARGET_DIRECTORY ${target}
    PROPERTIES COMPILE_DEFINITIONS "${dispatch_defs}")
  set(GRASS_CPU_LEVELS ${levels} PARENT_SCOPE)
  message(STATUS "grass: CPU kernels compiled for the levels ${levels}, chosen at run time")
endfunction()
