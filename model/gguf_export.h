// Writing a Llama as GGUF v3 for llama.cpp and Ollama: `llama` architecture metadata with the value
// types llama.cpp requires, the tokenizer metadata, Q/K rows permuted to llama.cpp's RoPE layout,
// `rope_freqs` for llama3 scaling, tied output omitted; tensors F32 (norms), F16, BF16 or Q8_0.
// Tensors are converted one at a time while writing (bounded memory), written atomically.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "model/checkpoint.h"
#include "model/gguf.h"

namespace bonsai {

struct GgufExportOptions {
  std::string dtype = "f16";  // f32, f16, bf16, q8_0 (for 2-D weights; norms are always F32)
  std::string name;           // general.name
  // tokenizer.* keys (tokens, token types, merges, pre-tokenizer, bos/eos, chat template)
  std::vector<std::pair<std::string, gguf::Value>> tokenizer_kv;
};

void write_gguf(const std::string& path, const LlamaConfig& cfg, const std::map<std::string, torch::Tensor>& tensors,
                const GgufExportOptions& opt);
// An Ollama Modelfile for `gguf_file` (FROM, TEMPLATE and stop parameters chosen from the chat
// template's family: ChatML or Llama 3). Throws for a template it does not recognize.
std::string ollama_modelfile(const std::string& gguf_file, const std::string& chat_template);
// llama.cpp's permutation of Q/K rows (the inverse of what the GGUF loader undoes). w is (n_head*D, C).
torch::Tensor permute_qk_for_gguf(const torch::Tensor& w, int64_t n_head);
// Per-frequency divisors for llama3 RoPE scaling, as llama.cpp's rope_freqs tensor holds them.
torch::Tensor llama3_rope_factors(const LlamaConfig& cfg);

}  // namespace bonsai
