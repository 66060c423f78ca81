// bonsai's one exception type. Library code throws it with context (file, key or tensor; what was
// expected; what was found) and, where it helps, a hint; only main() catches, prints, and exits.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

namespace bonsai {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what, std::string hint = "")
      : std::runtime_error(what), hint_(std::move(hint)) {}
  const std::string& hint() const { return hint_; }

 private:
  std::string hint_;
};

// Re-throws `e` with `context` prefixed ("while loading teacher 'x': <what>"), keeping the hint.
[[noreturn]] inline void rethrow_with_context(const Error& e, const std::string& context) {
  throw Error(context + ": " + e.what(), e.hint());
}

}  // namespace bonsai
