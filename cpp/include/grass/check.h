// Argument checks that throw one error type with a formatted message.
//
//   GRASS_CHECK(k >= 1, "k must be >= 1, got %lld", (long long)k);
//
// The Python binding turns grass::Error into ValueError, so every message should
// name the argument, what was expected and what came.
#pragma once
#include <cstdio>
#include <stdexcept>
#include <string>

namespace grass {

class Error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {
template <typename... Args>
[[noreturn]] inline void throw_error(const char* func, const char* fmt, Args... args) {
  char msg[1024];
  if constexpr (sizeof...(Args) == 0) {
    std::snprintf(msg, sizeof(msg), "%s", fmt);
  } else {
    std::snprintf(msg, sizeof(msg), fmt, args...);
  }
  throw Error(std::string("grass.") + func + ": " + msg);
}
}  // namespace detail
}  // namespace grass

#define GRASS_CHECK(cond, ...)                              \
  do {                                                      \
    if (!(cond)) ::grass::detail::throw_error(__func__, __VA_ARGS__); \
  } while (0)

// GRASS_CHECK for helpers and lambdas, where __func__ is not the API function's name.
#define GRASS_CHECK_IN(func, cond, ...)                                   \
  do {                                                                    \
    if (!(cond)) ::grass::detail::throw_error(func, __VA_ARGS__);         \
  } while (0)
