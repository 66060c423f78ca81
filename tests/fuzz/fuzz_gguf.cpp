// libFuzzer target for the GGUF reader: arbitrary bytes go through File::parse. A bonsai::Error is
// the expected outcome for bad input; any other exception, crash, leak or UB report is a bug. When
// a file does parse, every accessor and the dequantizer are exercised too, since the parser
// promises that tensor data lies inside the buffer and that metadata accessors only throw
// bonsai::Error.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "model/ggml_quants.h"
#include "model/gguf.h"

namespace {

void touch_value(const bonsai::gguf::Value& v) {
  try {
    (void)v.as_u64();
  } catch (const bonsai::Error&) {
  }
  try {
    (void)v.as_i64();
  } catch (const bonsai::Error&) {
  }
  try {
    (void)v.as_f64();
  } catch (const bonsai::Error&) {
  }
  try {
    (void)v.as_string().size();
  } catch (const bonsai::Error&) {
  }
  try {
    for (const auto& item : v.as_array()) touch_value(item);
  } catch (const bonsai::Error&) {
  }
}

void exercise(const bonsai::gguf::File& f) {
  for (const auto& kv : f.metadata()) touch_value(kv.second);
  for (const auto& t : f.tensors()) {
    if (!bonsai::gguf::is_supported_for_dequant(t.type) || t.numel() > (1u << 16)) continue;
    std::vector<float> out(static_cast<size_t>(t.numel()));
    bonsai::gguf::dequantize(t.type, t.data, out.data(), static_cast<int64_t>(t.numel()));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto f = bonsai::gguf::File::parse(data, size, "fuzz.gguf");
    exercise(f);
  } catch (const bonsai::Error&) {
    // Rejected input: the one acceptable failure.
  }
  return 0;
}
