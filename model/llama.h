// The Llama decoder in LibTorch: RMSNorm (fp32 inside), RoPE (with llama3 frequency scaling), GQA
// causal attention, SwiGLU MLP, tied or untied output. Parameter names are exactly Hugging Face's
// ("model.layers.3.self_attn.q_proj.weight"), so state dicts move between the two unchanged.
//
// Shapes: B batch, T time, C hidden, H query heads, Hkv kv heads, D head dim, I MLP width, V vocab.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "model/config.h"

namespace bonsai {

// Called with (layer, name, tensor) for every named activation when set; layer is -1 for global
// ones. Names: embed, attn_norm, q, k, v (after RoPE, (B,H|Hkv,T,D)), attn_out ((B,T,H*D), before
// o_proj), attn_proj, ffn_norm, ffn_act ((B,T,I), silu(gate)*up), ffn_out, layer_out, final_norm,
// logits. Costs one branch per activation when unset.
using TraceFn = std::function<void(int64_t layer, const char* name, const torch::Tensor& t)>;

struct ForwardOptions {
  int64_t start_pos = 0;        // position of the first token (RoPE offset)
  bool return_hidden = false;   // fill ForwardOutput::hidden_states (HF convention, L+1 tensors)
  bool compute_logits = true;   // false: skip the output projection (callers that fuse it)
  // Training: keep only each layer's input and recompute the layer in backward (activation
  // checkpointing). Ignored when grad mode is off. The trace hook then also fires during recompute.
  bool checkpoint_layers = false;
  const TraceFn* trace = nullptr;
};

struct ForwardOutput {
  torch::Tensor logits;                      // (B,T,V) in the model dtype
  torch::Tensor last_hidden;                 // (B,T,C) after the final norm
  std::vector<torch::Tensor> hidden_states;  // embeddings, then each layer's output; last is normed
};

// A module holding one parameter called "weight" (so names nest like HF's).
struct WeightImpl : torch::nn::Module {
  explicit WeightImpl(std::vector<int64_t> shape);
  std::vector<int64_t> shape;  // the shape the weight will have
  torch::Tensor weight;
};

struct LlamaLayer {
  std::shared_ptr<WeightImpl> attn_norm, q, k, v, o, ffn_norm, gate, up, down;
};

class LlamaImpl : public torch::nn::Module {
 public:
  explicit LlamaImpl(const LlamaConfig& cfg);
  ForwardOutput forward(const torch::Tensor& input_ids /* (B,T) int64 */, const ForwardOptions& opt = {});
  torch::Tensor logits(const torch::Tensor& input_ids) { return forward(input_ids).logits; }

  const LlamaConfig& config() const { return cfg_; }
  // (T, D/2) rotation angles' cos and sin for positions [start, start+T), fp32.
  std::pair<torch::Tensor, torch::Tensor> rope_cos_sin(int64_t start, int64_t T, torch::Device dev) const;
  torch::Tensor inv_freq() const { return inv_freq_; }
  torch::Tensor output_weight() const;  // lm_head, or the embedding when tied
  torch::Tensor embedding_weight() const { return embed_->weight; }
  torch::Tensor final_norm_weight() const { return final_norm_->weight; }
  const std::vector<LlamaLayer>& layers() const { return layers_; }

  // Replaces every parameter with the tensor of the same HF name (no copy when dtype and device
  // match, e.g. an mmap'ed checkpoint). Missing, extra or wrong-shaped tensors throw, naming them.
  void load_state(const std::map<std::string, torch::Tensor>& tensors, const std::string& source);
  // Random init like transformers (normal(0, std), norms = 1) from a seeded generator.
  void init_random(uint64_t seed, double std = 0.02);

 private:
  friend class CheckpointedBlock;
  torch::Tensor block(const LlamaLayer& l, int64_t layer, torch::Tensor x, const torch::Tensor& cos,
                      const torch::Tensor& sin, const ForwardOptions& opt);
  LlamaConfig cfg_;
  std::shared_ptr<WeightImpl> embed_, final_norm_, lm_head_;
  std::vector<LlamaLayer> layers_;
  torch::Tensor inv_freq_;  // (D/2,) fp32, llama3-scaled when configured
};
TORCH_MODULE(Llama);

// The RoPE inverse frequencies for a config, llama3 scaling applied (fp32, (D/2,)).
torch::Tensor rope_inv_freq(const LlamaConfig& cfg);
// x is (B,heads,T,D); cos/sin broadcast against (...,T,D/2) in x's dtype. Rotates the two halves of
// each head (transformers' rotate_half layout), so HF checkpoints need no permutation.
torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);
// RMSNorm as in transformers: normalize in fp32, cast back, then scale by the weight. With a graph to
// record, a custom backward that saves only the input and 1/rms (same forward numbers).
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);
// silu(gate) * up; with a graph to record, a custom backward that saves only gate and up.
torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up);
// Greedy decoding by recomputing the whole sequence each step (reference path; the runtime has the
// KV-cache one). Returns the n_new generated ids.
std::vector<int64_t> greedy_generate_reference(Llama& model, std::vector<int64_t> prompt, int64_t n_new);

}  // namespace bonsai
