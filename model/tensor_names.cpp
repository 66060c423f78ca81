#include "model/tensor_names.h"

namespace bonsai {

std::vector<TensorSpec> llama_tensor_specs(const LlamaConfig& c) {
  const int64_t C = c.hidden_size, V = c.vocab_size, I = c.intermediate_size;
  const int64_t HD = c.num_attention_heads * c.head_dim, KD = c.num_key_value_heads * c.head_dim;
  std::vector<TensorSpec> s;
  s.push_back({TensorRole::kTokEmbd, -1, "model.embed_tokens.weight", "token_embd.weight", {V, C}});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string hf = "model.layers." + std::to_string(l) + ".";
    const std::string gg = "blk." + std::to_string(l) + ".";
    s.push_back({TensorRole::kAttnNorm, l, hf + "input_layernorm.weight", gg + "attn_norm.weight", {C}});
    s.push_back({TensorRole::kAttnQ, l, hf + "self_attn.q_proj.weight", gg + "attn_q.weight", {HD, C}});
    s.push_back({TensorRole::kAttnK, l, hf + "self_attn.k_proj.weight", gg + "attn_k.weight", {KD, C}});
    s.push_back({TensorRole::kAttnV, l, hf + "self_attn.v_proj.weight", gg + "attn_v.weight", {KD, C}});
    s.push_back({TensorRole::kAttnO, l, hf + "self_attn.o_proj.weight", gg + "attn_output.weight", {C, HD}});
    s.push_back({TensorRole::kFfnNorm, l, hf + "post_attention_layernorm.weight", gg + "ffn_norm.weight", {C}});
    s.push_back({TensorRole::kFfnGate, l, hf + "mlp.gate_proj.weight", gg + "ffn_gate.weight", {I, C}});
    s.push_back({TensorRole::kFfnUp, l, hf + "mlp.up_proj.weight", gg + "ffn_up.weight", {I, C}});
    s.push_back({TensorRole::kFfnDown, l, hf + "mlp.down_proj.weight", gg + "ffn_down.weight", {C, I}});
  }
  s.push_back({TensorRole::kOutputNorm, -1, "model.norm.weight", "output_norm.weight", {C}});
  if (!c.tie_word_embeddings) s.push_back({TensorRole::kOutput, -1, "lm_head.weight", "output.weight", {V, C}});
  return s;
}

const TensorSpec* find_spec(const std::vector<TensorSpec>& specs, const std::string& hf_name) {
  for (const auto& s : specs)
    if (s.hf_name == hf_name) return &s;
  return nullptr;
}

const char* role_name(TensorRole r) {
  switch (r) {
    case TensorRole::kTokEmbd: return "token embedding";
    case TensorRole::kOutputNorm: return "output norm";
    case TensorRole::kOutput: return "output projection";
    case TensorRole::kAttnNorm: return "attention norm";
    case TensorRole::kAttnQ: return "attention q";
    case TensorRole::kAttnK: return "attention k";
    case TensorRole::kAttnV: return "attention v";
    case TensorRole::kAttnO: return "attention output";
    case TensorRole::kFfnNorm: return "ffn norm";
    case TensorRole::kFfnGate: return "ffn gate";
    case TensorRole::kFfnUp: return "ffn up";
    case TensorRole::kFfnDown: return "ffn down";
  }
  return "?";
}

}  // namespace bonsai
