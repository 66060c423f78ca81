// Byte-level BPE tokenizer (GPT-2 / Llama 3 / SmolLM / StarCoder families), torch-free.
// Loads from a Hugging Face tokenizer.json, a tiktoken ranks file (Llama 3), GGUF tokenizer
// metadata, or GPT-2 vocab.json + merges.txt. Pre-tokenization uses PCRE2 (JIT, Unicode).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace bonsai {

class Tokenizer {
 public:
  // `spec` is a model directory (tokenizer.json inside), a tokenizer.json, a tiktoken ranks file
  // (*.model / *.tiktoken; Llama 3 special tokens are added), a .gguf file, or a directory with
  // vocab.json + merges.txt. Throws bonsai::Error naming the file and what is wrong.
  static Tokenizer load(const std::string& spec);

  // Text -> ids. With parse_special, special-token strings in the text ("<|eot_id|>") become their
  // ids; without, they are encoded as plain text. Never adds BOS/EOS (see add_bos()).
  std::vector<int32_t> encode(std::string_view text, bool parse_special = false) const;
  // ids -> text (special tokens rendered as their strings unless skip_special).
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;

  int64_t vocab_size() const;          // including special/added tokens
  int32_t bos_id() const;              // -1 when the model has none
  int32_t eos_id() const;              // -1 when none
  bool add_bos() const;                // whether the model expects BOS prepended (from its metadata)
  std::string token_text(int32_t id) const;  // the raw token string (byte-level form), for debugging
  int32_t token_id(const std::string& token_text) const;  // -1 if absent; works for special tokens
  bool is_special(int32_t id) const;
  // A stable hash of vocab + merges + special tokens + pre-tokenizer: shards record it, loaders check it.
  std::string identity() const;
  std::string pre_tokenizer_name() const;  // "llama-bpe", "gpt-2", "smollm", "starcoder"
  std::string chat_template() const;       // the model's Jinja chat template string, "" if unknown

  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Incremental decoding for streaming generation: feed ids one at a time, get the text that is now
// complete. Never emits half of a UTF-8 character; flush() returns what is left.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok, bool skip_special = false);
  std::string push(int32_t id);
  std::string flush();

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  std::string pending_;  // bytes of an incomplete UTF-8 sequence
};

}  // namespace bonsai
