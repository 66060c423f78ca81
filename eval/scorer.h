// Log-likelihood scoring on a Llama (model/llama.h) for multiple-choice tasks and perplexity.
//
// Multiple choice shares the context: the context runs through the model once (keeping every
// layer's K/V), then all choices' continuations run together as ONE packed sequence that attends to
// the context's K/V and, causally, to its own choice only (a block-diagonal mask), each token at its
// true position (RoPE). Logits are computed only where a continuation token is predicted. This is
// the same arithmetic as running each context+continuation through the model (what
// lm-evaluation-harness does), up to fp32 summation order; tests/test_eval.cpp and
// scripts/ref/eval_ref.py check it against transformers.
//
// Shapes: T context length, S packed continuation tokens, C hidden, H/Hkv heads, D head dim, V vocab.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "model/llama.h"

namespace bonsai::eval {

struct ContinuationScore {
  double logprob = 0;   // sum of log p(token | everything before it) over the continuation
  bool greedy = true;   // every continuation token was the argmax (lm-eval's is_greedy)
  int64_t tokens = 0;
};

// Scores each continuation after the shared `context` (non-empty; every continuation non-empty).
// The caller checks that context + the longest continuation fits the model's context.
std::vector<ContinuationScore> score_continuations(Llama& model, const std::vector<int32_t>& context,
                                                   const std::vector<std::vector<int32_t>>& continuations);

struct WindowScore {
  double nll = 0;      // sum of -log p over the target tokens, nats
  int64_t tokens = 0;  // how many targets
};

// One perplexity window: ids (T) through the model; targets are ids[first_target .. T) (first_target
// >= 1), each predicted from the tokens before it in the window.
WindowScore score_window(Llama& model, const std::vector<int32_t>& ids, int64_t first_target);

}  // namespace bonsai::eval
