// The generation engine: a batch of requests with different prompt lengths and per-request sampling
// settings; prefill one prompt at a time into its KV-cache slot, then decode all live sequences
// together, one token per step. Streaming through a per-token callback.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/backend.h"
#include "runtime/sampler.h"

namespace bonsai {

struct GenerationRequest {
  std::vector<int32_t> prompt;  // token ids (BOS included if the model wants one)
  SamplingParams sampling;
};

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated ids (a stop id that ended the sequence is included)
  std::string text;             // detokenized, cut before a stop string (when a detokenizer is set)
  std::string finish_reason;    // "stop" (EOS / stop id / stop string), "length", or "cancelled"
  int64_t prompt_tokens = 0;
};

// Called for each new token of request `index`; return false to stop that request.
using TokenCallback = std::function<bool(size_t index, int32_t token)>;
// ids -> text; needed for stop strings and GenerationResult::text.
using Detokenizer = std::function<std::string(const std::vector<int32_t>&)>;

struct GenerationStats {
  int64_t prompt_tokens = 0, generated_tokens = 0, decode_steps = 0;
  double prefill_s = 0, decode_s = 0;
};

class Engine {
 public:
  explicit Engine(std::unique_ptr<Backend> backend, Detokenizer detok = {});
  std::vector<GenerationResult> generate(const std::vector<GenerationRequest>& requests,
                                         const TokenCallback& on_token = {});
  const GenerationStats& last_stats() const { return stats_; }
  Backend& backend() { return *backend_; }

 private:
  std::unique_ptr<Backend> backend_;
  Detokenizer detok_;
  GenerationStats stats_;
};

}  // namespace bonsai
