// A minimal test harness for the C++ unit tests (no external framework needed).
//
//   GRASS_TEST(sjlt_matches_reference) { ... EXPECT_NEAR(a, b, 1e-6); }
//   int main() { return grass_test::run_all(); }
//
// Each failed expectation prints file:line and the values; run_all returns 1 if any
// test failed, so ctest reports it.
#pragma once
#include <cmath>
#include <cstdio>
#include <exception>
#include <functional>
#include <string>
#include <vector>

namespace grass_test {

struct Case {
  const char* name;
  std::function<void()> fn;
};
inline std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}
inline int& failures() {
  static int n = 0;
  return n;
}
struct Register {
  Register(const char* name, std::function<void()> fn) { registry().push_back({name, std::move(fn)}); }
};

inline int run_all() {
  int failed_cases = 0;
  for (auto& c : registry()) {
    int before = failures();
    try {
      c.fn();
    } catch (const std::exception& e) {
      std::printf("  unexpected exception: %s\n", e.what());
      ++failures();
    }
    bool ok = failures() == before;
    failed_cases += ok ? 0 : 1;
    std::printf("[%s] %s\n", ok ? "  OK  " : "FAILED", c.name);
  }
  std::printf("%zu cases, %d failed\n", registry().size(), failed_cases);
  return failed_cases ? 1 : 0;
}

}  // namespace grass_test

#define GRASS_TEST(name)                                                   \
  static void name();                                                      \
  static grass_test::Register name##_registered(#name, name);              \
  static void name()

#define EXPECT_TRUE(cond)                                                          \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      std::printf("  %s:%d: expected %s\n", __FILE__, __LINE__, #cond);            \
      ++grass_test::failures();                                                    \
    }                                                                              \
  } while (0)

#define EXPECT_EQ(a, b)                                                            \
  do {                                                                             \
    auto va_ = (a);                                                                \
    auto vb_ = (b);                                                                \
    if (!(va_ == vb_)) {                                                           \
      std::printf("  %s:%d: expected %s == %s (%s vs %s)\n", __FILE__, __LINE__, #a, #b, \
                  std::to_string(va_).c_str(), std::to_string(vb_).c_str());       \
      ++grass_test::failures();                                                    \
    }                                                                              \
  } while (0)

#define EXPECT_NEAR(a, b, tol)                                                     \
  do {                                                                             \
    double va_ = (a), vb_ = (b);                                                   \
    if (!(std::fabs(va_ - vb_) <= (tol))) {                                        \
      std::printf("  %s:%d: |%s - %s| = |%.9g - %.9g| > %g\n", __FILE__, __LINE__, #a, #b, \
                  va_, vb_, (double)(tol));                                        \
      ++grass_test::failures();                                                    \
    }                                                                              \
  } while (0)

// Expects `stmt` to throw grass::Error whose message contains `fragment`.
#define EXPECT_THROWS_WITH(stmt, fragment)                                         \
  do {                                                                             \
    bool thrown_ = false;                                                          \
    try {                                                                          \
      stmt;                                                                        \
    } catch (const grass::Error& e_) {                                             \
      thrown_ = std::string(e_.what()).find(fragment) != std::string::npos;        \
      if (!thrown_)                                                                \
        std::printf("  %s:%d: message '%s' lacks '%s'\n", __FILE__, __LINE__, e_.what(), fragment); \
    }                                                                              \
    if (!thrown_) {                                                                \
      std::printf("  %s:%d: expected grass::Error from %s\n", __FILE__, __LINE__, #stmt); \
      ++grass_test::failures();                                                    \
    }                                                                              \
  } while (0)
