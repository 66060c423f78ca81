// Byte-level BPE tokenizer (GPT-2 / Llama 3 / SmolLM / StarCoder families), torch-free.
// Loads from a Hugging Face tokenizer.json, a tiktoken ranks file (Llama 3), GGUF tokenizer
// metadata, or GPT-2 vocab.json + merges.txt. Pre-tokenization uses PCRE2 (JIT, Unicode).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bonsai {

class Tokenizer {
 public:
  // `spec` is a model directory (tokenizer.json inside), a tokenizer.json, a tiktoken ranks file
  // (*.model / *.tiktoken; Llama 3 special tokens are added), a .gguf file, or a directory with
  // vocab.json + merges.txt (or the vocab.json itself), or a known model name
  // ("smollm2-135m-instruct", see model/registry.h). Throws bonsai::Error naming the file and what
  // is wrong.
  static Tokenizer load(const std::string& spec);

  // Text -> ids. With parse_special, special-token strings in the text ("<|eot_id|>") become their
  // ids; without, they are encoded as plain text. Never adds BOS/EOS (see add_bos()).
  // User-defined (non-special) added tokens are always matched, as HF and llama.cpp do. Malformed
  // UTF-8 is kept byte for byte (HF and llama.cpp would substitute U+FFFD), so decode(encode(x))
  // == x for any bytes. Thread-safe: each thread keeps its own cache of encoded words.
  std::vector<int32_t> encode(std::string_view text, bool parse_special = false) const;
  // encode(), and also the byte offset in `text` where each id's text starts (starts.size() ==
  // ids.size()); for mapping spans of the text (e.g. assistant turns of a chat) onto ids.
  std::vector<int32_t> encode_with_offsets(std::string_view text, bool parse_special,
                                           std::vector<size_t>& starts) const;
  // ids -> text (special tokens rendered as their strings unless skip_special). The result is raw
  // bytes: ids that split a UTF-8 character give part of it (see StreamDecoder). Throws for an id
  // outside [0, vocab_size()).
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;
  // The bytes one id decodes to (throws like decode() for a bad id).
  const std::string& token_bytes(int32_t id) const;

  int64_t vocab_size() const;          // including special/added tokens
  int32_t bos_id() const;              // -1 when the model has none
  int32_t eos_id() const;              // -1 when none
  bool add_bos() const;                // whether the model expects BOS prepended (from its metadata)
  std::string token_text(int32_t id) const;  // the raw token string (byte-level form), for debugging
  int32_t token_id(const std::string& token_text) const;  // -1 if absent; works for special tokens
  bool is_special(int32_t id) const;
  // A stable hash of vocab + merges + special tokens + pre-tokenizer: shards record it, loaders check it.
  // Hex SHA-256 of the canonical content (split patterns, ignore_merges, every token's kind and
  // string in id order, merges as id pairs in rank order, or "by rank" for tiktoken files), so the
  // same vocabulary hashes the same whichever file form it was loaded from (GGUF, tokenizer.json,
  // vocab.json + merges.txt); bos/eos and the chat template are not part of it.
  std::string identity() const;
  // "llama-bpe", "gpt-2", "smollm", "starcoder" (as a GGUF names it; a tokenizer.json with
  // Digits + ByteLevel, which is both, reports "starcoder"), or "custom" for other split patterns.
  std::string pre_tokenizer_name() const;
  std::string chat_template() const;       // the model's Jinja chat template string, "" if unknown
  const std::string& source() const;       // the file it was loaded from

  // The content in file form, for writers of other tokenizer formats (data/tokenizer_export.h);
  // defined in data/tokenizer_export.cpp.
  enum class TokenType : uint8_t { Missing, Normal, Special, Added };  // Added: user-defined, always matched
  TokenType token_type(int32_t id) const;   // Missing for an id no token has (or out of range)
  bool token_lstrip(int32_t id) const;      // HF AddedToken lstrip / rstrip flags
  bool token_rstrip(int32_t id) const;
  const std::vector<std::string>& split_patterns() const;  // pre-tokenizer regexes, applied in order
  bool ignore_merges() const;  // a piece that is itself a token is emitted whole (Llama 3)
  bool merges_by_rank() const;  // tiktoken: merge ranks are token ids, there is no explicit list
  // Explicit merges (left id, right id) in rank order; empty when merges_by_rank().
  const std::vector<std::pair<int32_t, int32_t>>& merges() const;

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
