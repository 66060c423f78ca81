// The one table of a Llama's tensors: role, layer, Hugging Face name, GGUF name and shape (from the
// config). Loaders, writers and the pruner all go through it, so a name or a shape is defined once.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace bonsai {

enum class TensorRole {
  kTokEmbd, kOutputNorm, kOutput,                         // global
  kAttnNorm, kAttnQ, kAttnK, kAttnV, kAttnO,              // per layer
  kFfnNorm, kFfnGate, kFfnUp, kFfnDown,
};

struct TensorSpec {
  TensorRole role;
  int64_t layer;             // -1 for global tensors
  std::string hf_name;       // "model.layers.3.self_attn.q_proj.weight"
  std::string gguf_name;     // "blk.3.attn_q.weight"
  std::vector<int64_t> shape;  // PyTorch order (out, in) for matrices
};

// Every tensor the config implies, in HF order. `lm_head.weight` only when embeddings are untied.
std::vector<TensorSpec> llama_tensor_specs(const LlamaConfig& cfg);
// The spec with this HF name, or nullptr.
const TensorSpec* find_spec(const std::vector<TensorSpec>& specs, const std::string& hf_name);
const char* role_name(TensorRole r);

}  // namespace bonsai
