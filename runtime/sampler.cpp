#include "runtime/sampler.h"

#include <algorithm>

#include "core/error.h"

namespace bonsai {

void SamplingParams::validate() const {
  if (temperature < 0) throw Error("sampling: temperature must be >= 0, got " + std::to_string(temperature), "0 means greedy");
  if (top_k < 0) throw Error("sampling: top_k must be >= 0, got " + std::to_string(top_k), "0 turns it off");
  if (top_p <= 0 || top_p > 1) throw Error("sampling: top_p must be in (0, 1], got " + std::to_string(top_p));
  if (min_p < 0 || min_p >= 1) throw Error("sampling: min_p must be in [0, 1), got " + std::to_string(min_p));
  if (repetition_penalty <= 0) throw Error("sampling: repetition_penalty must be > 0, got " + std::to_string(repetition_penalty));
  if (max_tokens <= 0) throw Error("sampling: max_tokens must be > 0, got " + std::to_string(max_tokens));
}

Sampler::Sampler(const SamplingParams& p) : p_(p), gen_(at::make_generator<at::CPUGeneratorImpl>(p.seed)) {
  p_.validate();
}

int32_t Sampler::sample(torch::Tensor logits, const std::vector<int32_t>& history) {
  logits = logits.to(torch::kFloat).cpu().clone();  // (V,)
  if (p_.repetition_penalty != 1.0 && !history.empty()) {
    std::vector<int64_t> ids(history.begin(), history.end());
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    auto idx = torch::tensor(ids, torch::kLong);
    auto seen = logits.index_select(0, idx);
    seen = torch::where(seen > 0, seen / p_.repetition_penalty, seen * p_.repetition_penalty);
    logits.index_copy_(0, idx, seen);
  }
  if (p_.temperature == 0.0) return static_cast<int32_t>(logits.argmax().item<int64_t>());
  logits = logits / p_.temperature;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  if (p_.top_k > 0 && p_.top_k < logits.size(0)) {
    auto kth = std::get<0>(logits.topk(p_.top_k)).min();
    logits.masked_fill_(logits < kth, neg_inf);
  }
  if (p_.top_p < 1.0) {
    // Keep the smallest set of most likely tokens whose mass reaches top_p (at least one).
    auto [sorted, order] = logits.sort(/*dim=*/0, /*descending=*/true);
    auto cum = sorted.softmax(0).cumsum(0);
    auto drop = (cum - sorted.softmax(0)) >= p_.top_p;  // mass before this token already enough
    logits.index_put_({order.masked_select(drop)}, neg_inf);
  }
  if (p_.min_p > 0.0) {
    auto probs = logits.softmax(0);
    logits.masked_fill_(probs < probs.max() * p_.min_p, neg_inf);
  }
  auto probs = logits.softmax(0);
  return static_cast<int32_t>(torch::multinomial(probs, 1, /*replacement=*/false, gen_).item<int64_t>());
}

}  // namespace bonsai
