// Small string helpers shared by error messages and config parsing.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace bonsai {

// Edit distance (insert, delete, substitute), for "did you mean" hints.
size_t edit_distance(const std::string& a, const std::string& b);
// The candidate closest to `key`, or "" when none is reasonably close.
std::string nearest(const std::string& key, const std::vector<std::string>& candidates);
std::string join(const std::vector<std::string>& parts, const std::string& sep);
std::string shape_str(const std::vector<int64_t>& shape);  // "[576, 1536]"
// "5GB", "500MB", "2GiB", "1048576" -> bytes. Throws bonsai::Error naming `what` on bad input.
uint64_t parse_size(const std::string& s, const std::string& what);
std::string human_bytes(uint64_t n);  // "1.23 GiB"

}  // namespace bonsai
