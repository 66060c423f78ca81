// Shared helpers for bonsai's C++ tests: where fixtures live, and relative-error comparison.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace bonsai::test {

// A directory given by an environment variable (CTest sets them); empty when unset.
inline std::string env_dir(const char* var) {
  const char* v = std::getenv(var);
  return v == nullptr ? std::string() : std::string(v);
}

// Fresh scratch directory under the test's temp root.
inline std::string scratch_dir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() / ("bonsai_test_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

}  // namespace bonsai::test

// Skips (with the reason printed) when a fixture directory is missing.
#define BONSAI_REQUIRE_DIR(var, dir)                                                              \
  std::string dir = bonsai::test::env_dir(var);                                                   \
  if (dir.empty() || !std::filesystem::exists(dir))                                              \
    GTEST_SKIP() << var << " is not set or missing ('" << dir << "'): run the tests through ctest, " \
                 << "which generates the fixture first"
