// Per-sequence sampling: repetition penalty, temperature, top-k, top-p, min-p, then a draw from a
// per-sequence seeded generator (so a fixed seed gives the same text whatever else is batched).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace bonsai {

struct SamplingParams {
  double temperature = 0.0;         // 0 = greedy (argmax)
  int64_t top_k = 0;                // 0 = off
  double top_p = 1.0;               // 1 = off
  double min_p = 0.0;               // 0 = off
  double repetition_penalty = 1.0;  // 1 = off; HF semantics (divide positive logits, multiply negative)
  uint64_t seed = 0;
  int64_t max_tokens = 128;
  std::vector<int32_t> stop_ids;    // in addition to the model's EOS ids (unless ignore_eos)
  std::vector<std::string> stop_strings;
  bool ignore_eos = false;

  void validate() const;  // throws bonsai::Error naming the bad setting
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p);
  // logits (V,) fp32; `history` holds the prompt and generated ids (for the repetition penalty).
  int32_t sample(torch::Tensor logits, const std::vector<int32_t>& history);

 private:
  SamplingParams p_;
  at::Generator gen_;
};

}  // namespace bonsai
