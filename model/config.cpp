#include "model/config.h"

#include <fstream>

#include "core/error.h"
#include "core/strings.h"

namespace bonsai {
namespace {

using json = nlohmann::json;

int64_t get_int(const json& j, const char* key, const std::string& src, std::optional<int64_t> def = {}) {
  if (!j.contains(key) || j[key].is_null()) {
    if (def) return *def;
    throw Error(src + ": missing key '" + key + "'", "a Llama config.json needs it; see transformers' LlamaConfig");
  }
  if (!j[key].is_number_integer()) {
    throw Error(src + ": key '" + key + "' must be an integer, found " + j[key].dump());
  }
  return j[key].get<int64_t>();
}

double get_float(const json& j, const char* key, const std::string& src, std::optional<double> def = {}) {
  if (!j.contains(key) || j[key].is_null()) {
    if (def) return *def;
    throw Error(src + ": missing key '" + key + "'");
  }
  if (!j[key].is_number()) throw Error(src + ": key '" + key + "' must be a number, found " + j[key].dump());
  return j[key].get<double>();
}

std::vector<int64_t> get_ids(const json& j, const char* key, const std::string& src) {
  std::vector<int64_t> ids;
  if (!j.contains(key) || j[key].is_null()) return ids;
  if (j[key].is_number_integer()) return {j[key].get<int64_t>()};
  if (j[key].is_array()) {
    for (const auto& v : j[key]) {
      if (!v.is_number_integer()) throw Error(src + ": key '" + std::string(key) + "' must hold integers, found " + v.dump());
      ids.push_back(v.get<int64_t>());
    }
    return ids;
  }
  throw Error(src + ": key '" + std::string(key) + "' must be an integer or a list, found " + j[key].dump());
}

// rope_scaling (transformers 4.x) or rope_parameters (5.x): {rope_type|type, factor, ...}.
void read_rope(const json& j, const std::string& src, LlamaConfig& c) {
  const json* rs = nullptr;
  std::string key = "rope_scaling";
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) rs = &j["rope_parameters"], key = "rope_parameters";
  else if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) rs = &j["rope_scaling"];
  c.rope_theta = get_float(j, "rope_theta", src, rs && rs->contains("rope_theta") ? (*rs)["rope_theta"].get<double>() : 10000.0);
  if (rs == nullptr) return;
  if (!rs->is_object()) throw Error(src + ": key '" + key + "' must be an object or null, found " + rs->dump());
  std::string type = rs->value("rope_type", rs->value("type", std::string("default")));
  if (type == "default") return;
  if (type != "llama3") {
    throw Error(src + ": " + key + ".rope_type '" + type + "' is not supported",
                "bonsai implements the default RoPE and 'llama3' scaling");
  }
  std::string s = src + " (" + key + ")";
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = get_float(*rs, "factor", s);
  c.rope_scaling.low_freq_factor = get_float(*rs, "low_freq_factor", s);
  c.rope_scaling.high_freq_factor = get_float(*rs, "high_freq_factor", s);
  c.rope_scaling.original_max_position_embeddings = get_int(*rs, "original_max_position_embeddings", s);
}

void reject_unsupported(const json& j, const std::string& src) {
  if (j.contains("model_type") && j["model_type"] != "llama") {
    throw Error(src + ": model_type is " + j["model_type"].dump() + ", expected \"llama\"",
                "bonsai works on Llama-architecture models (Llama 2/3, SmolLM, TinyLlama, ...)");
  }
  if (j.contains("architectures") && j["architectures"].is_array()) {
    for (const auto& a : j["architectures"])
      if (a != "LlamaForCausalLM") throw Error(src + ": architecture " + a.dump() + " is not supported", "expected LlamaForCausalLM");
  }
  for (const char* k : {"attention_bias", "mlp_bias"}) {
    if (j.contains(k) && j[k].is_boolean() && j[k].get<bool>()) {
      throw Error(src + ": key '" + std::string(k) + "' is true; bonsai's Llama has no biases");
    }
  }
  if (j.contains("hidden_act") && j["hidden_act"] != "silu") {
    throw Error(src + ": hidden_act " + j["hidden_act"].dump() + " is not supported", "Llama uses \"silu\"");
  }
}

}  // namespace

LlamaConfig LlamaConfig::from_json(const json& j, const std::string& src) {
  if (!j.is_object()) throw Error(src + ": expected a JSON object");
  reject_unsupported(j, src);
  LlamaConfig c;
  c.vocab_size = get_int(j, "vocab_size", src);
  c.hidden_size = get_int(j, "hidden_size", src);
  c.intermediate_size = get_int(j, "intermediate_size", src);
  c.num_hidden_layers = get_int(j, "num_hidden_layers", src);
  c.num_attention_heads = get_int(j, "num_attention_heads", src);
  c.num_key_value_heads = get_int(j, "num_key_value_heads", src, c.num_attention_heads);
  if (c.num_attention_heads <= 0) throw Error(src + ": num_attention_heads must be positive, found " + std::to_string(c.num_attention_heads));
  c.head_dim = get_int(j, "head_dim", src, c.hidden_size / c.num_attention_heads);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", src, 2048);
  c.rms_norm_eps = get_float(j, "rms_norm_eps", src, 1e-6);
  read_rope(j, src, c);
  c.tie_word_embeddings = j.value("tie_word_embeddings", false);
  c.bos_token_id = get_ids(j, "bos_token_id", src);
  c.eos_token_id = get_ids(j, "eos_token_id", src);
  if (j.contains("pad_token_id") && j["pad_token_id"].is_number_integer()) c.pad_token_id = j["pad_token_id"].get<int64_t>();
  if (j.contains("torch_dtype") && j["torch_dtype"].is_string()) c.torch_dtype = j["torch_dtype"];
  else if (j.contains("dtype") && j["dtype"].is_string()) c.torch_dtype = j["dtype"];
  c.validate(src);
  return c;
}

LlamaConfig LlamaConfig::from_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error("cannot read '" + path + "'", "an HF model directory needs a config.json");
  json j;
  try {
    j = json::parse(in);
  } catch (const json::parse_error& e) {
    throw Error("'" + path + "' is not valid JSON (" + e.what() + ")");
  }
  return from_json(j, path);
}

void LlamaConfig::validate(const std::string& src) const {
  auto positive = [&](const char* name, int64_t v) {
    if (v <= 0) throw Error(src + ": " + name + " must be positive, found " + std::to_string(v));
  };
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("intermediate_size", intermediate_size);
  positive("num_hidden_layers", num_hidden_layers);
  positive("num_attention_heads", num_attention_heads);
  positive("num_key_value_heads", num_key_value_heads);
  positive("head_dim", head_dim);
  if (num_attention_heads % num_key_value_heads != 0) {
    throw Error(src + ": num_attention_heads (" + std::to_string(num_attention_heads) +
                ") is not a multiple of num_key_value_heads (" + std::to_string(num_key_value_heads) + ")",
                "grouped-query attention needs every KV head to serve the same number of query heads");
  }
  if (head_dim % 2 != 0) throw Error(src + ": head_dim must be even for RoPE, found " + std::to_string(head_dim));
  if (rms_norm_eps <= 0) throw Error(src + ": rms_norm_eps must be positive");
  if (rope_theta <= 0) throw Error(src + ": rope_theta must be positive");
  if (rope_scaling.type == "llama3") {
    if (rope_scaling.factor <= 0 || rope_scaling.high_freq_factor <= rope_scaling.low_freq_factor) {
      throw Error(src + ": rope_scaling needs factor > 0 and high_freq_factor > low_freq_factor");
    }
  }
  for (auto id : bos_token_id)
    if (id < 0 || id >= vocab_size) throw Error(src + ": bos_token_id " + std::to_string(id) + " is outside the vocabulary [0, " + std::to_string(vocab_size) + ")");
  for (auto id : eos_token_id)
    if (id < 0 || id >= vocab_size) throw Error(src + ": eos_token_id " + std::to_string(id) + " is outside the vocabulary [0, " + std::to_string(vocab_size) + ")");
}

json LlamaConfig::to_json() const {
  json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  if (rope_scaling.type == "llama3") {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", rope_scaling.factor},
                         {"low_freq_factor", rope_scaling.low_freq_factor},
                         {"high_freq_factor", rope_scaling.high_freq_factor},
                         {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["hidden_act"] = "silu";
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["mlp_bias"] = false;
  j["initializer_range"] = 0.02;
  j["pretraining_tp"] = 1;
  j["use_cache"] = true;
  j["tie_word_embeddings"] = tie_word_embeddings;
  auto ids = [](const std::vector<int64_t>& v) -> json {
    if (v.empty()) return nullptr;
    if (v.size() == 1) return v[0];
    return v;
  };
  j["bos_token_id"] = ids(bos_token_id);
  j["eos_token_id"] = ids(eos_token_id);
  if (pad_token_id) j["pad_token_id"] = *pad_token_id;
  j["torch_dtype"] = torch_dtype;
  return j;
}

int64_t LlamaConfig::num_parameters() const {
  int64_t C = hidden_size, D = head_dim;
  int64_t attn = C * num_attention_heads * D * 2 + C * num_key_value_heads * D * 2;
  int64_t mlp = 3 * C * intermediate_size;
  int64_t per_layer = attn + mlp + 2 * C;
  int64_t emb = vocab_size * C * (tie_word_embeddings ? 1 : 2);
  return emb + num_hidden_layers * per_layer + C;
}

bool operator==(const LlamaConfig& a, const LlamaConfig& b) { return a.to_json() == b.to_json(); }

}  // namespace bonsai
