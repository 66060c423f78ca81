// Shared helpers for bonsai's C++ tests: where fixtures live, and relative-error comparison.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>

#include "core/error.h"

#include "test_paths.h"

namespace bonsai::test {

// A fixture path: the environment variable when set, else where this build's CTest puts it.
inline std::string env_dir(const char* var) {
  if (const char* v = std::getenv(var)) return v;
  static const std::map<std::string, std::string> defaults = {BONSAI_TEST_DEFAULTS};
  auto it = defaults.find(var);
  return it == defaults.end() ? std::string() : it->second;
}

// The same as a C string (nullptr when there is none), for code written against std::getenv.
inline const char* env_cstr(const char* var) {
  static std::map<std::string, std::string> keep;
  std::string v = env_dir(var);
  if (v.empty()) return nullptr;
  return keep.insert_or_assign(var, v).first->second.c_str();
}

// The message of the bonsai::Error that f throws ("what | hint: hint"), or "(no error)".
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const bonsai::Error& e) {
    return std::string(e.what()) + (e.hint().empty() ? "" : " | hint: " + e.hint());
  }
  return "(no error)";
}

// A whole file's bytes ("" when it cannot be read).
inline std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
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
