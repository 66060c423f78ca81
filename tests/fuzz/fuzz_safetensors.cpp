// libFuzzer target for the safetensors reader: arbitrary bytes go through File::parse, the
// in-memory entry point. A bonsai::Error is the expected outcome for bad input; any other
// exception, crash or sanitizer report is a bug. For input that parses, every view is read end to
// end and looked up by name, so ASan catches a view that points outside the input.
//
// The raw bytes rarely carry a consistent length prefix, so each input is also parsed a second
// time re-framed: its first two bytes give a data-section size d, the middle is the header text and
// the last d bytes are the data. That lets the fuzzer spend its time on the JSON and offset checks.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/safetensors.h"

namespace {

namespace st = bonsai::safetensors;

void parse_and_touch(const uint8_t* data, size_t size) {
  try {
    st::File f = st::File::parse(data, size, "fuzz.safetensors");
    uint64_t sum = 0;
    for (const st::TensorView& t : f.tensors()) {
      for (size_t i = 0; i < t.nbytes; ++i) sum += t.data[i];
      if (&f.get(t.name) != &t) __builtin_trap();
      if (static_cast<uint64_t>(t.numel()) * st::dtype_size(t.dtype) != t.nbytes) __builtin_trap();
    }
    for (const auto& kv : f.metadata()) sum += kv.first.size() + kv.second.size();
    if (f.find("\x01 not a name") != nullptr) __builtin_trap();
    volatile uint64_t sink = sum;  // keeps the reads from being optimized away
    (void)sink;
  } catch (const bonsai::Error&) {
  }
}

std::vector<uint8_t> reframe(const uint8_t* data, size_t size) {
  const size_t body = size - 2;
  const size_t d = std::min<size_t>(data[0] | (size_t{data[1]} << 8), body);
  const uint64_t n = body - d;
  std::vector<uint8_t> out(8);
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(n >> (8 * i));
  out.insert(out.end(), data + 2, data + size);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  parse_and_touch(data, size);
  if (size >= 2) {
    // Exact-size heap copy, so ASan sees any read one byte past the end.
    const std::vector<uint8_t> framed = reframe(data, size);
    parse_and_touch(framed.data(), framed.size());
  }
  return 0;
}
