#include "model/checkpoint.h"

#include <filesystem>
#include <fstream>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/strings.h"
#include "model/gguf.h"
#include "model/ggml_quants.h"
#include "model/registry.h"
#include "model/safetensors.h"
#include "model/tensor_names.h"

namespace bonsai {
namespace fs = std::filesystem;
using json = nlohmann::json;

torch::ScalarType parse_dtype(const std::string& s, const std::string& what) {
  if (s == "f32" || s == "float32" || s == "fp32") return torch::kFloat;
  if (s == "bf16" || s == "bfloat16") return torch::kBFloat16;
  if (s == "f16" || s == "float16" || s == "fp16") return torch::kHalf;
  throw Error(what + ": unknown dtype '" + s + "'", "use f32, bf16 or f16");
}

std::string dtype_hf_name(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat: return "float32";
    case torch::kBFloat16: return "bfloat16";
    case torch::kHalf: return "float16";
    default: throw Error(std::string("dtype ") + c10::toString(t) + " cannot be saved as a model dtype");
  }
}

namespace {

torch::ScalarType to_torch(safetensors::DType d, const std::string& what) {
  using D = safetensors::DType;
  switch (d) {
    case D::F64: return torch::kDouble;
    case D::F32: return torch::kFloat;
    case D::F16: return torch::kHalf;
    case D::BF16: return torch::kBFloat16;
    case D::I64: return torch::kLong;
    case D::I32: return torch::kInt;
    case D::I16: return torch::kShort;
    case D::I8: return torch::kChar;
    case D::U8: return torch::kByte;
    case D::BOOL: return torch::kBool;
    default: throw Error(what + ": dtype " + safetensors::dtype_name(d) + " is not supported for model weights");
  }
}

safetensors::DType from_torch(torch::ScalarType t) {
  using D = safetensors::DType;
  switch (t) {
    case torch::kDouble: return D::F64;
    case torch::kFloat: return D::F32;
    case torch::kHalf: return D::F16;
    case torch::kBFloat16: return D::BF16;
    case torch::kLong: return D::I64;
    case torch::kInt: return D::I32;
    case torch::kShort: return D::I16;
    case torch::kChar: return D::I8;
    case torch::kByte: return D::U8;
    case torch::kBool: return D::BOOL;
    default: throw Error(std::string("cannot write dtype ") + c10::toString(t) + " to safetensors");
  }
}

// Checks that `tensors` holds exactly the config's tensors with the table's shapes.
void check_against_table(const LlamaConfig& cfg, std::map<std::string, torch::Tensor>& tensors,
                         const std::string& source) {
  auto specs = llama_tensor_specs(cfg);
  for (const auto& s : specs) {
    auto it = tensors.find(s.hf_name);
    if (it == tensors.end()) {
      throw Error(source + ": tensor '" + s.hf_name + "' (" + role_name(s.role) + ") is missing",
                  "the checkpoint is incomplete or does not match its config");
    }
    if (it->second.sizes().vec() != s.shape) {
      throw Error(source + ": tensor '" + s.hf_name + "' has wrong shape; expected " + shape_str(s.shape) +
                      ", got " + shape_str(it->second.sizes().vec()),
                  "the checkpoint does not match its config");
    }
  }
  if (cfg.tie_word_embeddings) tensors.erase("lm_head.weight");  // unused copy of the embedding
  for (const auto& [name, t] : tensors) {
    if (find_spec(specs, name) == nullptr) {
      throw Error(source + ": unexpected tensor '" + name + "' for a Llama of this config",
                  "is this a different architecture, or a config that does not belong to these weights?");
    }
  }
}

std::string find_hf_config(const fs::path& p) {
  fs::path dir = fs::is_directory(p) ? p : p.parent_path();
  fs::path cfg = dir / "config.json";
  if (!fs::exists(cfg)) {
    throw Error("'" + p.string() + "': no config.json in '" + dir.string() + "'",
                "an HF checkpoint is a directory with config.json and *.safetensors");
  }
  return cfg.string();
}

// Tensors over the mapping: the deleter holds `owner`, so they stay valid after the reader is gone.
template <class Owner>
torch::Tensor view_tensor(const safetensors::TensorView& v, const std::shared_ptr<Owner>& owner,
                          const std::string& source) {
  auto type = to_torch(v.dtype, source + ": tensor '" + v.name + "'");
  return torch::from_blob(const_cast<uint8_t*>(v.data), v.shape, [owner](void*) {},
                          torch::TensorOptions().dtype(type));
}

Checkpoint load_hf(const fs::path& path, std::optional<torch::ScalarType> dtype) {
  Checkpoint ck;
  ck.format = "hf";
  ck.source = path.string();
  ck.hf_dir = (fs::is_directory(path) ? path : path.parent_path()).string();
  ck.config = LlamaConfig::from_file(find_hf_config(path));
  auto st = std::make_shared<safetensors::Checkpoint>(safetensors::Checkpoint::open(path.string()));
  for (const auto& name : st->names()) {
    torch::Tensor t = view_tensor(st->get(name), st, ck.source);
    if (dtype && *dtype != t.scalar_type()) {
      torch::Tensor converted = t.to(*dtype);
      release_file_pages(t);  // converted: the file's pages need not stay resident
      t = converted;
    }
    ck.tensors.emplace(name, t);
  }
  fs::path gen = fs::path(ck.hf_dir) / "generation_config.json";
  if (fs::exists(gen)) {
    std::ifstream in(gen);
    ck.generation_config = json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (ck.generation_config.is_discarded()) ck.generation_config = nullptr;
  }
  check_against_table(ck.config, ck.tensors, ck.source);
  return ck;
}

// ---- GGUF -------------------------------------------------------------------------------------

int64_t gguf_int(const gguf::File& f, const std::string& key, std::optional<int64_t> def = {}) {
  const gguf::Value* v = f.find(key);
  if (v == nullptr) {
    if (def) return *def;
    throw Error("GGUF '" + f.path() + "': missing metadata key '" + key + "'",
                "the file is not a complete llama-architecture GGUF");
  }
  return v->as_i64();  // accepts every integer type whose value fits
}

LlamaConfig gguf_config(const gguf::File& f) {
  const std::string arch = f.get("general.architecture").as_string();
  if (arch != "llama") {
    throw Error("GGUF '" + f.path() + "': general.architecture is '" + arch + "', expected 'llama'");
  }
  LlamaConfig c;
  c.hidden_size = gguf_int(f, "llama.embedding_length");
  c.intermediate_size = gguf_int(f, "llama.feed_forward_length");
  c.num_hidden_layers = gguf_int(f, "llama.block_count");
  c.num_attention_heads = gguf_int(f, "llama.attention.head_count");
  c.num_key_value_heads = gguf_int(f, "llama.attention.head_count_kv", c.num_attention_heads);
  c.head_dim = gguf_int(f, "llama.attention.key_length", c.hidden_size / std::max<int64_t>(1, c.num_attention_heads));
  c.max_position_embeddings = gguf_int(f, "llama.context_length", 2048);
  const gguf::Value* eps = f.find("llama.attention.layer_norm_rms_epsilon");
  if (eps == nullptr) throw Error("GGUF '" + f.path() + "': missing metadata key 'llama.attention.layer_norm_rms_epsilon'");
  c.rms_norm_eps = eps->as_f64();
  const gguf::Value* base = f.find("llama.rope.freq_base");
  c.rope_theta = base ? base->as_f64() : 10000.0;
  if (const gguf::Value* tokens = f.find("tokenizer.ggml.tokens")) {
    c.vocab_size = gguf_int(f, "llama.vocab_size", static_cast<int64_t>(tokens->as_array().size()));
  } else {
    c.vocab_size = gguf_int(f, "llama.vocab_size");
  }
  if (f.find("tokenizer.ggml.bos_token_id")) c.bos_token_id = {gguf_int(f, "tokenizer.ggml.bos_token_id")};
  if (f.find("tokenizer.ggml.eos_token_id")) c.eos_token_id = {gguf_int(f, "tokenizer.ggml.eos_token_id")};
  if (f.find("tokenizer.ggml.padding_token_id")) c.pad_token_id = gguf_int(f, "tokenizer.ggml.padding_token_id");
  c.tie_word_embeddings = f.find_tensor("output.weight") == nullptr;
  if (f.find_tensor("rope_freqs.weight") != nullptr) {
    // llama.cpp stores llama3 scaling only as per-frequency factors, which do not determine the
    // four HF parameters uniquely; bonsai's own exports also carry them as bonsai.rope.llama3.*.
    if (f.find("bonsai.rope.llama3.factor") == nullptr) {
      throw Error("GGUF '" + f.path() + "' has 'rope_freqs.weight' (llama3 RoPE scaling) but no bonsai.rope.llama3.* keys",
                  "llama3-scaled GGUFs from other tools cannot be mapped back to HF exactly; load the HF checkpoint instead");
    }
    c.rope_scaling.type = "llama3";
    c.rope_scaling.factor = f.get("bonsai.rope.llama3.factor").as_f64();
    c.rope_scaling.low_freq_factor = f.get("bonsai.rope.llama3.low_freq_factor").as_f64();
    c.rope_scaling.high_freq_factor = f.get("bonsai.rope.llama3.high_freq_factor").as_f64();
    c.rope_scaling.original_max_position_embeddings = gguf_int(f, "bonsai.rope.llama3.original_max_position_embeddings");
  }
  c.validate("GGUF '" + f.path() + "'");
  return c;
}

// Undoes convert_hf_to_gguf's permute(): GGUF rows are (n_head, 2, D/2) interleaved pairs; HF
// rows are (n_head, D/2, 2)-ordered halves. w is (n_head*D, C).
torch::Tensor unpermute_qk(const torch::Tensor& w, int64_t n_head) {
  const int64_t rows = w.size(0), cols = w.size(1);
  return w.reshape({n_head, rows / n_head / 2, 2, cols}).transpose(1, 2).reshape({rows, cols}).contiguous();
}

Checkpoint load_gguf(const std::string& path, std::optional<torch::ScalarType> dtype) {
  auto f = gguf::File::open(path);
  Checkpoint ck;
  ck.format = "gguf";
  ck.source = path;
  ck.config = gguf_config(f);
  const std::string src = "GGUF '" + path + "'";
  for (const auto& s : llama_tensor_specs(ck.config)) {
    const gguf::TensorInfo* ti = f.find_tensor(s.gguf_name);
    if (ti == nullptr) throw Error(src + ": tensor '" + s.gguf_name + "' (" + role_name(s.role) + ") is missing");
    std::vector<int64_t> shape(ti->ne.rbegin(), ti->ne.rend());  // ggml ne[0] is the fastest dim
    if (shape != s.shape) {
      throw Error(src + ": tensor '" + s.gguf_name + "' has wrong shape; expected " + shape_str(s.shape) +
                  ", got " + shape_str(shape), "the GGUF metadata does not match its tensors");
    }
    if (!gguf::is_supported_for_dequant(ti->type)) {
      throw Error(src + ": tensor '" + s.gguf_name + "' has type " + gguf::type_name(ti->type) + ", which bonsai cannot dequantize",
                  "supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K");
    }
    torch::Tensor t = torch::empty(shape, torch::kFloat);
    gguf::dequantize(ti->type, ti->data, t.data_ptr<float>(), t.numel());
    if (s.role == TensorRole::kAttnQ) t = unpermute_qk(t, ck.config.num_attention_heads);
    if (s.role == TensorRole::kAttnK) t = unpermute_qk(t, ck.config.num_key_value_heads);
    if (dtype && *dtype != torch::kFloat) t = t.to(*dtype);
    ck.tensors.emplace(s.hf_name, t);
  }
  for (const auto& [key, value] : f.metadata())
    if (key.rfind("tokenizer.", 0) == 0) ck.gguf_tokenizer_kv.emplace_back(key, value);
  json gen = {{"_from_model_config", true}};
  if (!ck.config.bos_token_id.empty()) gen["bos_token_id"] = ck.config.bos_token_id[0];
  if (!ck.config.eos_token_id.empty()) gen["eos_token_id"] = ck.config.eos_token_id[0];
  ck.generation_config = gen;
  return ck;
}

json default_generation_config(const LlamaConfig& cfg) {
  json gen = {{"_from_model_config", true}};
  auto ids = [](const std::vector<int64_t>& v) -> json { return v.size() == 1 ? json(v[0]) : json(v); };
  if (!cfg.bos_token_id.empty()) gen["bos_token_id"] = ids(cfg.bos_token_id);
  if (!cfg.eos_token_id.empty()) gen["eos_token_id"] = ids(cfg.eos_token_id);
  return gen;
}

void move_into_place(const fs::path& partial, const fs::path& dir) {
  fs::path old = dir.string() + ".old";
  std::error_code ec;
  fs::remove_all(old, ec);
  if (fs::exists(dir)) fs::rename(dir, old);
  fs::rename(partial, dir);
  fs::remove_all(old, ec);
}

}  // namespace

std::map<std::string, torch::Tensor> load_safetensors(const std::string& path) {
  auto f = std::make_shared<safetensors::File>(safetensors::File::open(path));
  std::map<std::string, torch::Tensor> out;
  for (const auto& v : f->tensors()) out.emplace(v.name, view_tensor(v, f, "safetensors '" + path + "'"));
  return out;
}

void save_safetensors(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<torch::Tensor> keep;
  std::vector<safetensors::TensorView> views;
  for (const auto& [name, t0] : tensors) {
    torch::Tensor t = t0.contiguous().cpu();
    keep.push_back(t);
    views.push_back({name, from_torch(t.scalar_type()), t.sizes().vec(), static_cast<const uint8_t*>(t.data_ptr()),
                     static_cast<size_t>(t.nbytes())});
  }
  safetensors::write_file(path, views, metadata);
}

size_t release_file_pages(const torch::Tensor& t) {
  if (!t.defined() || !t.device().is_cpu() || !t.has_storage()) return 0;
  const c10::Storage& s = t.storage();
  return release_mapped_pages(s.data(), s.nbytes());
}

Checkpoint load_checkpoint(const std::string& path_or_name, std::optional<torch::ScalarType> dtype) {
  const std::string path = resolve_model(path_or_name);
  try {
    fs::path p(path);
    if (p.extension() == ".gguf") return load_gguf(path, dtype);
    return load_hf(p, dtype);
  } catch (const Error& e) {
    if (path != path_or_name) rethrow_with_context(e, "while loading '" + path_or_name + "'");
    throw;
  }
}

Llama load_model(const std::string& path, std::optional<torch::ScalarType> dtype) {
  Checkpoint ck = load_checkpoint(path, dtype);
  Llama model(ck.config);
  model->load_state(ck.tensors, ck.source);
  model->eval();
  return model;
}

void save_hf_checkpoint(const std::string& dir, const LlamaConfig& cfg_in,
                        const std::map<std::string, torch::Tensor>& tensors_in, const SaveOptions& opt) {
  LlamaConfig cfg = cfg_in;
  cfg.torch_dtype = dtype_hf_name(opt.dtype);
  std::map<std::string, torch::Tensor> tensors;
  // Host copies: the writer reads data_ptr() from this process, so tensors on a GPU (a trainer's
  // checkpoint) come over to the CPU here, one at a time as they are converted.
  for (const auto& [name, t] : tensors_in) tensors[name] = t.to(torch::kCPU, opt.dtype).contiguous();
  check_against_table(cfg, tensors, "saving '" + dir + "'");

  fs::path partial = dir + ".partial";
  std::error_code ec;
  fs::remove_all(partial, ec);
  fs::create_directories(partial);
  // HF order (embeddings, layers, norm, head): what transformers' own save produces, and what a
  // reader streaming the file sequentially wants.
  std::vector<safetensors::TensorView> views;
  for (const auto& s : llama_tensor_specs(cfg)) {
    const torch::Tensor& t = tensors.at(s.hf_name);
    views.push_back({s.hf_name, from_torch(t.scalar_type()), t.sizes().vec(),
                     static_cast<const uint8_t*>(t.data_ptr()), static_cast<size_t>(t.nbytes())});
  }
  safetensors::write_checkpoint(partial.string(), views, opt.max_shard_bytes, opt.metadata);
  write_file_atomic((partial / "config.json").string(), cfg.to_json().dump(2) + "\n");
  json gen = opt.generation_config.is_null() ? default_generation_config(cfg) : opt.generation_config;
  write_file_atomic((partial / "generation_config.json").string(), gen.dump(2) + "\n");
  if (!opt.carry_tokenizer_from.empty()) {
    for (const char* name : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                             "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja"}) {
      fs::path src = fs::path(opt.carry_tokenizer_from) / name;
      if (fs::exists(src)) fs::copy_file(src, partial / name, fs::copy_options::overwrite_existing);
    }
  }
  move_into_place(partial, dir);
}

}  // namespace bonsai
