// The C++ tests' one assertion: counts checks and failures and prints the first few,
// so a run reports every kind of failure instead of stopping at the first.
#pragma once

#include <cstdio>
#include <string>

namespace adamcore_test {

inline int g_failures = 0;
inline int g_checks = 0;

inline void check(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    if (g_failures <= 30) std::printf("FAIL: %s\n", what.c_str());
  }
}

// main's return value, after a summary line.
inline int report() {
  std::printf("%d checks, %d failed\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}

}  // namespace adamcore_test
