// Writing a bonsai Tokenizer as Hugging Face tokenizer files: tokenizer.json (byte-level BPE with the
// model's split regexes), tokenizer_config.json (special tokens, chat template, add_bos_token) and
// special_tokens_map.json, so that transformers' AutoTokenizer encodes exactly as bonsai does and
// Tokenizer::load reads them back to the same identity(). Used by `bonsai export --format hf` for
// sources that carry no tokenizer.json (GGUF). Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "model/gguf.h"

#include "data/tokenizer.h"

namespace bonsai {

struct HfTokenizerOptions {
  int64_t model_max_length = 0;  // the model's context length; written when > 0
  int32_t pad_id = -1;           // pad_token; -1 = none
  // unk_token, named in the config only: the BPE model keeps "unk_token": null, so bytes that have
  // no token are dropped, as bonsai and llama.cpp do, rather than becoming <unk>.
  int32_t unk_id = -1;
};

// The file contents. Throw bonsai::Error when the tokenizer cannot be written as a tokenizer.json
// (a tiktoken ranks file has no explicit merges; a token that is not valid UTF-8).
std::string hf_tokenizer_json(const Tokenizer& tok);
std::string hf_tokenizer_config_json(const Tokenizer& tok, const HfTokenizerOptions& opt);
std::string hf_special_tokens_map_json(const Tokenizer& tok, const HfTokenizerOptions& opt);

// The GGUF `tokenizer.*` metadata llama.cpp reads for a byte-level BPE model: ggml.model "gpt2",
// ggml.pre (the pre-tokenizer's llama.cpp name), tokens in id order (byte-level strings; ids no token
// has become "[PAD<id>]", type UNUSED), token_type (1 normal, 3 control = special, 4 user-defined =
// added), merges ("left right" in rank order), bos/eos/unknown/padding ids when known, add_bos_token,
// add_space_prefix false, and the chat template. Throws bonsai::Error for what llama.cpp could not
// tokenize the same way: tiktoken ranks (no merge list) and split patterns it has no name for.
struct GgufTokenizerOptions {
  int32_t pad_id = -1;  // -1 = none
  int32_t unk_id = -1;
};
std::vector<std::pair<std::string, gguf::Value>> gguf_tokenizer_kv(const Tokenizer& tok,
                                                                  const GgufTokenizerOptions& opt = {});

// Writes the three files into the existing directory `dir`, each atomically.
void write_hf_tokenizer(const Tokenizer& tok, const std::string& dir, const HfTokenizerOptions& opt = {});

// For `bonsai export --format hf`: the directory the HF checkpoint should carry its tokenizer files
// from. An HF source directory with a tokenizer.json is returned as is. Otherwise the tokenizer read
// from `source` (a .gguf, or an HF directory with vocab.json + merges.txt) is written into `staging`
// (created), next to links to the files of `hf_dir` (if any), which take precedence over the
// generated ones, and `staging` is returned. Returns "" and sets `why` when there is no tokenizer
// to write (an HF directory without tokenizer files, or a tiktoken file).
std::string stage_hf_tokenizer(const std::string& source, const std::string& hf_dir, const std::string& staging,
                               const HfTokenizerOptions& opt, std::string& why);

}  // namespace bonsai
