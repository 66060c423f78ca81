// Log-likelihood scoring on a Llama (model/llama.h) for multiple-choice tasks and perplexity.
//
// Multiple choice shares the context: a question's context is computed once for all its choices.
// Several questions are packed into ONE sequence (B=1): each question's context tokens, then each
// choice's continuation tokens, every token at its true position (RoPE), with a mask that lets a
// token see only its own question's context and, causally, its own choice. One forward then does
// many questions with large matrix products (2 CPU cores are far from busy at 20-40 rows), and
// logits are computed only for the rows that predict a continuation token. This is the arithmetic
// of running each context+continuation through the model (what lm-evaluation-harness does), up to
// fp32 summation order; scripts/ref/eval_ref.py checks it against transformers.
//
// Shapes: T context length, N packed tokens, R rows with logits, C hidden, H/Hkv heads, D head dim, V vocab.
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

struct McRequest {
  std::vector<int32_t> context;                    // non-empty
  std::vector<std::vector<int32_t>> continuations;  // each non-empty
};

// Scores every continuation of every request in one packed forward; out[q][c]. The caller checks
// that each context + its longest continuation fits the model's context, and bounds the total
// tokens (attention over the packed sequence is N^2).
std::vector<std::vector<ContinuationScore>> score_requests(Llama& model, const std::vector<McRequest>& reqs);
// One question.
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
