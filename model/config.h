// LlamaConfig: the architecture hyper-parameters of a Llama, read from and written to Hugging Face
// `config.json`. Anything the model code does not implement (biases, other rope types, other
// architectures) is rejected here with the key named, so the forward never silently differs.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace bonsai {

struct RopeScaling {
  std::string type = "none";  // "none" or "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct LlamaConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;        // C
  int64_t intermediate_size = 0;  // MLP width
  int64_t num_hidden_layers = 0;  // L
  int64_t num_attention_heads = 0;  // H
  int64_t num_key_value_heads = 0;  // H_kv (GQA)
  int64_t head_dim = 0;           // D; explicit, may differ from C / H
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  std::vector<int64_t> bos_token_id;  // HF allows an int or a list
  std::vector<int64_t> eos_token_id;
  std::optional<int64_t> pad_token_id;
  std::string torch_dtype = "float32";  // informational: the dtype the weights were saved in

  // Parses HF config.json content. `source` names the file for errors.
  static LlamaConfig from_json(const nlohmann::json& j, const std::string& source);
  static LlamaConfig from_file(const std::string& path);
  nlohmann::json to_json() const;  // a config.json transformers loads (LlamaForCausalLM)
  // Structural checks (positive sizes, heads divisible by kv heads, even head_dim). Throws naming `source`.
  void validate(const std::string& source) const;
  int64_t num_parameters() const;
  int64_t kv_group_size() const { return num_attention_heads / num_key_value_heads; }
};

bool operator==(const LlamaConfig& a, const LlamaConfig& b);

}  // namespace bonsai
