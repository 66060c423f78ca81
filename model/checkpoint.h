// Loading and saving whole Llama checkpoints as HF-named torch tensors:
//   - a Hugging Face directory (config.json + model.safetensors or a sharded index), mmap'ed: tensors
//     whose dtype is kept point straight into the file (no copy);
//   - a GGUF file (llama.cpp), dequantized, with llama.cpp's Q/K row permutation undone.
// Every tensor is checked against the table in tensor_names.h (expected vs found shape).
#pragma once

#include <torch/torch.h>

#include <map>
#include <optional>
#include <string>

#include "model/config.h"
#include "model/gguf.h"
#include "model/llama.h"

namespace bonsai {

struct Checkpoint {
  LlamaConfig config;
  std::map<std::string, torch::Tensor> tensors;  // HF names
  std::string source;         // the resolved path
  std::string format;         // "hf" or "gguf"
  std::string hf_dir;         // for "hf": the directory (tokenizer files are carried from it)
  nlohmann::json generation_config;  // from generation_config.json, or built from the config
  std::vector<std::pair<std::string, gguf::Value>> gguf_tokenizer_kv;  // for "gguf": its tokenizer.* keys
};

// `path` is an HF directory, a .safetensors file beside a config.json, a .gguf file, or a short name
// from model/registry.h. With `dtype`, every tensor is converted to it (copies); without, tensors keep
// their stored dtype (GGUF quantized tensors become float32).
Checkpoint load_checkpoint(const std::string& path, std::optional<torch::ScalarType> dtype = std::nullopt);
// A ready model (parameters share the checkpoint's tensors).
Llama load_model(const std::string& path, std::optional<torch::ScalarType> dtype = std::nullopt);

struct SaveOptions {
  torch::ScalarType dtype = torch::kFloat;
  uint64_t max_shard_bytes = 5'000'000'000;  // transformers' default shard size
  std::string carry_tokenizer_from;          // an HF directory whose tokenizer files are copied
  nlohmann::json generation_config;          // written as generation_config.json (built if null)
  std::map<std::string, std::string> metadata;  // extra safetensors __metadata__ (provenance)
};
// Writes an HF directory transformers loads. Everything is written into "<dir>.partial" first and
// moved into place only when complete, so a crash never leaves a half-written checkpoint at `dir`.
void save_hf_checkpoint(const std::string& dir, const LlamaConfig& cfg,
                        const std::map<std::string, torch::Tensor>& tensors, const SaveOptions& opt);

// A plain safetensors file as named tensors (mmap'ed, no copy) and back (written atomically).
std::map<std::string, torch::Tensor> load_safetensors(const std::string& path);
void save_safetensors(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// A tensor read from an mmap'ed file (HF, safetensors) stays valid but gives its pages back: they
// leave this process's resident memory (the page cache keeps them) and are read again on the next
// use (core/mapped_file.h, release_mapped_pages). For walking a large checkpoint once without its
// whole file becoming resident. Tensors not over a mapping are left alone. Returns bytes released.
size_t release_file_pages(const torch::Tensor& t);

// "f32" / "float32" / "bf16" / "bfloat16" / "f16" / "float16" -> ScalarType (throws naming `what`).
torch::ScalarType parse_dtype(const std::string& s, const std::string& what);
std::string dtype_hf_name(torch::ScalarType t);  // "float32", "bfloat16", "float16"

}  // namespace bonsai
