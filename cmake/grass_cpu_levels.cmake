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
# that another level rounds twice, so all levels give bitwise the same results. The
# exception is GRASS_CPU_CONTRACTED_SOURCES, the dense micro-kernels of kron, FactGraSS and
# the iFVP: at the levels with FMA (and with -march=native) they are compiled with
# contraction, which doubles their flops per instruction, and agree with the baseline level
# within rounding, not bitwise.
include_guard(GLOBAL)

set(GRASS_CPU_FLAGS_baseline -msse4.2 -mpopcnt)
set(GRASS_CPU_FLAGS_avx2 -msse4.2 -mpopcnt -mavx2 -mfma)
set(GRASS_CPU_FLAGS_avx512 -msse4.2 -mpopcnt -mavx2 -mfma -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx512cd)
set(GRASS_CPU_COMMON_FLAGS -ffp-contract=off)
set(GRASS_CPU_CONTRACTED_SOURCES kron.cpp factgrass.cpp ifvp.cpp)

# Splits a list of sources into those in GRASS_CPU_CONTRACTED_SOURCES and the rest.
function(_grass_split_contracted out_contracted out_rest)
  set(contracted)
  set(rest)
  foreach(src IN LISTS ARGN)
    get_filename_component(name ${src} NAME)
    if(name IN_LIST GRASS_CPU_CONTRACTED_SOURCES)
      list(APPEND contracted ${src})
    else()
      list(APPEND rest ${src})
    endif()
  endforeach()
  set(${out_contracted} ${contracted} PARENT_SCOPE)
  set(${out_rest} ${rest} PARENT_SCOPE)
endfunction()

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
      _grass_split_contracted(contracted rest ${ARG_SOURCES})
      set_source_files_properties(${rest} TARGET_DIRECTORY ${target} PROPERTIES
        COMPILE_OPTIONS "-march=native;${GRASS_CPU_COMMON_FLAGS}")
      set_source_files_properties(${contracted} TARGET_DIRECTORY ${target} PROPERTIES
        COMPILE_OPTIONS "-march=native;-ffp-contract=fast")
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
  _grass_split_contracted(contracted rest ${ARG_SOURCES})
  foreach(level IN LISTS levels)
    # Source properties are per directory, not per target: the contracted sources of a
    # level with FMA get an object library of their own, with their own flags.
    set(objlib ${target}_cpu_${level})
    set(objlibs ${objlib})
    if(level STREQUAL "baseline")
      add_library(${objlib} OBJECT ${ARG_SOURCES} ${CMAKE_CURRENT_SOURCE_DIR}/src/cpu_table.cpp)
    else()
      add_library(${objlib} OBJECT ${rest} ${CMAKE_CURRENT_SOURCE_DIR}/src/cpu_table.cpp)
      add_library(${objlib}_fma OBJECT ${contracted})
      list(APPEND objlibs ${objlib}_fma)
    endif()
    foreach(lib IN LISTS objlibs)
      set_target_properties(${lib} PROPERTIES POSITION_INDEPENDENT_CODE ON)
      target_compile_features(${lib} PRIVATE cxx_std_17)
      # The same include directories, definitions and OpenMP flags as the library itself.
      target_include_directories(${lib} PRIVATE $<TARGET_PROPERTY:${target},INCLUDE_DIRECTORIES>)
      target_compile_definitions(${lib} PRIVATE $<TARGET_PROPERTY:${target},COMPILE_DEFINITIONS>
        GRASS_CPU_TABLE=grass_cpu_kernels_${level})
      target_link_libraries(${lib} PRIVATE OpenMP::OpenMP_CXX)
    endforeach()
    target_compile_options(${objlib} PRIVATE -Wall -Wextra -O3 ${GRASS_CPU_FLAGS_${level}} ${GRASS_CPU_COMMON_FLAGS})
    if(NOT level STREQUAL "baseline")
      target_compile_options(${objlib}_fma PRIVATE -Wall -Wextra -O3 ${GRASS_CPU_FLAGS_${level}} -ffp-contract=fast)
    endif()
    set(combined ${CMAKE_CURRENT_BINARY_DIR}/grass_cpu_${level}.combined.o)
    set(private ${CMAKE_CURRENT_BINARY_DIR}/grass_cpu_${level}.o)
    set(objects)
    foreach(lib IN LISTS objlibs)
      list(APPEND objects $<TARGET_OBJECTS:${lib}>)
    endforeach()
    add_custom_command(OUTPUT ${private}
      COMMAND ${CMAKE_CXX_COMPILER} -r -nostdlib -Wl,--force-group-allocation -o ${combined}
              ${objects}
      COMMAND ${CMAKE_OBJCOPY} --keep-global-symbol=grass_cpu_kernels_${level} ${combined} ${private}
      DEPENDS ${objects}
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
