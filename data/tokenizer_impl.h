// Internals of the byte-level BPE tokenizer (data/tokenizer.h), shared by its source files:
// the GPT-2 byte<->unicode map, UTF-8 helpers, a flat string-keyed hash map, the PCRE2
// pre-tokenizer, the BPE merge table, and Tokenizer::Impl itself. Not a public interface.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "data/tokenizer.h"

namespace bonsai::tok {

// ---- GPT-2's reversible byte <-> printable-unicode map ------------------------------------------

// The UTF-8 form of the character that stands for each byte in byte-level token strings.
const std::array<std::string, 256>& byte_to_unicode();
std::string byte_level_encode(std::string_view bytes);
// Maps a byte-level token string back to bytes. Returns false (out unspecified) when a character
// is not one of the 256 byte characters.
bool byte_level_decode(std::string_view s, std::string& out);

// ---- UTF-8 ------------------------------------------------------------------------------------

// Length of the well-formed UTF-8 sequence at s[0..n) (1-4), or 0 when the bytes there are not one
// (stray continuation, overlong form, surrogate, > U+10FFFF, truncated).
size_t utf8_seq_len(const unsigned char* s, size_t n);
// Length of the longest well-formed prefix of s[0..n).
size_t utf8_valid_prefix(const char* s, size_t n);
// Appends code point cp as UTF-8.
void append_utf8(std::string& out, uint32_t cp);

// ---- hashing ----------------------------------------------------------------------------------

uint64_t hash_bytes(const void* data, size_t n);
inline uint64_t hash_sv(std::string_view s) { return hash_bytes(s.data(), s.size()); }
// Lower-case hex SHA-256 of `data`.
std::string sha256_hex(std::string_view data);

// Open-addressing map from byte strings to V. Keys live in one arena, so lookups by string_view
// allocate nothing (std::unordered_map<std::string, ...> cannot do that before C++20).
template <typename V>
class FlatStringMap {
 public:
  FlatStringMap() { rehash(16); }

  const V* find(std::string_view key) const { return find(key, hash_sv(key)); }
  const V* find(std::string_view key, uint64_t h) const {
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.len == kEmpty) return nullptr;
      if (s.hash == h && s.len == key.size() && arena_.compare(s.off, s.len, key) == 0) return &s.value;
    }
  }
  // Inserts when absent; returns false (and leaves the old value) when the key is present.
  bool insert(std::string_view key, const V& value) { return insert(key, hash_sv(key), value); }
  bool insert(std::string_view key, uint64_t h, const V& value) {
    if (find(key, h) != nullptr) return false;
    if ((count_ + 1) * 2 > slots_.size()) rehash(slots_.size() * 2);
    size_t i = h & mask_;
    while (slots_[i].len != kEmpty) i = (i + 1) & mask_;
    slots_[i] = Slot{h, static_cast<uint32_t>(arena_.size()), static_cast<uint32_t>(key.size()), value};
    arena_.append(key.data(), key.size());
    ++count_;
    return true;
  }
  size_t size() const { return count_; }
  size_t arena_bytes() const { return arena_.size(); }
  void clear() {
    arena_.clear();
    count_ = 0;
    slots_.assign(16, Slot{});
    mask_ = 15;
  }
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap *= 2;
    if (cap > slots_.size()) rehash(cap);
  }

 private:
  static constexpr uint32_t kEmpty = 0xFFFFFFFFu;
  struct Slot {
    uint64_t hash = 0;
    uint32_t off = 0;
    uint32_t len = kEmpty;
    V value{};
  };
  void rehash(size_t cap) {
    std::vector<Slot> old;
    old.swap(slots_);
    slots_.assign(cap, Slot{});
    mask_ = cap - 1;
    for (const Slot& s : old) {
      if (s.len == kEmpty) continue;
      size_t i = s.hash & mask_;
      while (slots_[i].len != kEmpty) i = (i + 1) & mask_;
      slots_[i] = s;
    }
  }
  std::vector<Slot> slots_;
  std::string arena_;
  size_t mask_ = 0;
  size_t count_ = 0;
};

// ---- pre-tokenizer ------------------------------------------------------------------------------

// The split patterns, as the reference implementations write them.
extern const char* const kPatternGpt2;    // GPT-2 / HF ByteLevel(use_regex=true)
extern const char* const kPatternLlama3;  // Llama 3 (tiktoken, HF Split)
extern const char* const kPatternDigit;   // HF Digits(individual_digits=true), llama.cpp "\p{N}"
extern const char* const kPatternDigits;  // HF Digits(individual_digits=false)

// The known pattern lists and their names ("llama-bpe", "gpt-2", "smollm", "starcoder").
std::vector<std::string> known_pre_tokenizer(const std::string& name);  // empty when unknown
// "custom" when `patterns` is no known list; smollm and starcoder share one list ("starcoder").
std::string pre_tokenizer_name_for(const std::vector<std::string>& patterns);

// Rewrites a reference pattern for PCRE2: `\s` / `\S` become the Unicode White_Space class (which
// tiktoken, HF and llama.cpp use; PCRE2's UCP \s lacks U+0085), everything else is unchanged.
std::string pcre2_pattern(const std::string& pattern);

// One split stage: every regex match is a piece, and so is each stretch between matches (HF's
// "Isolated" behaviour, llama.cpp's unicode_regex_split). Matching sees only the piece it splits.
class RegexStage {
 public:
  explicit RegexStage(const std::string& pattern);  // throws bonsai::Error when PCRE2 rejects it
  ~RegexStage();
  RegexStage(const RegexStage&) = delete;
  RegexStage& operator=(const RegexStage&) = delete;
  using PieceFn = void (*)(void* ctx, size_t begin, size_t end);
  // Calls fn(ctx, begin, end) for each piece of s[0..n) (well-formed UTF-8), offsets relative to s.
  void split(const char* s, size_t n, PieceFn fn, void* ctx) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8
  bool jit_ = false;
};

class PreTokenizer {
 public:
  explicit PreTokenizer(std::vector<std::string> patterns);
  const std::vector<std::string>& patterns() const { return patterns_; }
  // Calls sink(begin, end) for each final piece of s[0..n) (well-formed UTF-8), in order.
  template <typename Sink>
  void split(const char* s, size_t n, Sink&& sink) const {
    split_stage(0, s, 0, n, sink);
  }

 private:
  // Streams: each stage hands its pieces straight to the next one, so nothing proportional to the
  // text is held.
  template <typename Sink>
  void split_stage(size_t k, const char* s, size_t b, size_t e, Sink& sink) const {
    if (k == stages_.size()) {
      sink(b, e);
      return;
    }
    struct Ctx {
      const PreTokenizer* self;
      size_t k;
      const char* s;
      size_t base;
      Sink* sink;
    } ctx{this, k, s, b, &sink};
    stages_[k]->split(s + b, e - b, [](void* p, size_t pb, size_t pe) {
      auto* c = static_cast<Ctx*>(p);
      c->self->split_stage(c->k + 1, c->s, c->base + pb, c->base + pe, *c->sink);
    }, &ctx);
  }
  std::vector<std::string> patterns_;
  std::vector<std::unique_ptr<RegexStage>> stages_;
};

// ---- BPE merges -------------------------------------------------------------------------------

// (left id, right id) -> (rank, merged id); open addressing on the packed 64-bit pair.
class MergeTable {
 public:
  struct Entry {
    int32_t rank;
    int32_t id;
  };
  void reserve(size_t n);
  // Keeps the lower rank when the pair is already present.
  void insert(int32_t left, int32_t right, int32_t rank, int32_t id);
  const Entry* find(int32_t left, int32_t right) const {
    uint64_t key = pack(left, right);
    for (size_t i = mix(key) & mask_;; i = (i + 1) & mask_) {
      if (keys_[i] == key) return &vals_[i];
      if (keys_[i] == kEmpty) return nullptr;
    }
  }
  size_t size() const { return count_; }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  static uint64_t pack(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  static uint64_t mix(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
  }
  void rehash(size_t cap);
  std::vector<uint64_t> keys_;
  std::vector<Entry> vals_;
  size_t mask_ = 0;
  size_t count_ = 0;
};

enum class TokenKind : uint8_t {
  Missing = 0,  // no token has this id
  Normal = 1,   // byte-level BPE token
  Special = 2,  // control token: matched in text only with parse_special; skip_special drops it
  Added = 3,    // user-defined token: always matched in text, even without parse_special
};

// Special/added token strings matched in raw text before pre-tokenization (leftmost, then longest).
class SpecialMatcher {
 public:
  struct Token {
    std::string text;
    int32_t id;
    bool lstrip = false;  // HF AddedToken: also swallow whitespace before / after the match
    bool rstrip = false;
  };
  void add(Token t);
  bool empty() const { return tokens_.empty(); }
  // Finds the first match in s[from..n): sets begin/end (including stripped whitespace) and the
  // token id; false when there is none.
  bool find(std::string_view s, size_t from, size_t& begin, size_t& end, int32_t& id) const;

 private:
  std::vector<Token> tokens_;
  FlatStringMap<int32_t> index_;  // text -> position in tokens_
  std::vector<size_t> lengths_;   // distinct lengths, longest first
  std::array<bool, 256> first_{};
};

}  // namespace bonsai::tok

namespace bonsai {

struct Tokenizer::Impl {
  // Vocabulary, indexed by id.
  std::vector<std::string> text;   // byte-level string for Normal tokens, the literal text otherwise
  std::vector<std::string> bytes;  // what the token decodes to
  std::vector<tok::TokenKind> kind;
  std::vector<uint8_t> strip;      // HF AddedToken flags per id: 1 = lstrip, 2 = rstrip (may be empty)
  tok::FlatStringMap<int32_t> text_to_id;   // token_id()
  tok::FlatStringMap<int32_t> bytes_to_id;  // Normal tokens by their bytes (ignore_merges lookups)
  std::array<int32_t, 256> byte_token{};    // the Normal token of each single byte, -1 if none

  // Merges: either explicit (vocab + merges list) or tiktoken-style (rank of the concatenation).
  tok::MergeTable merges;
  std::vector<std::pair<int32_t, int32_t>> merge_list;  // explicit merges in rank order (identity)
  bool ranks_are_ids = false;  // tiktoken: merge rank == id of the merged token
  bool ignore_merges = false;  // a piece that is itself a token is emitted whole (Llama 3)

  std::unique_ptr<tok::PreTokenizer> pre;
  std::string pre_name;
  tok::SpecialMatcher special_all;   // Special + Added: used with parse_special
  tok::SpecialMatcher special_user;  // Added only: used without

  int32_t bos = -1;
  int32_t eos = -1;
  bool add_bos = false;
  std::string chat_template;
  std::string source;  // what was loaded, for messages
  std::string identity;
  uint64_t serial = 0;  // distinguishes tokenizers in the per-thread word caches

  // Called by every loader once text/kind/merges/pre are set: derives bytes, the lookup maps,
  // the special matchers, the identity; checks that the vocabulary is byte-level.
  void finish();
  // Appends the BPE ids of one pre-token piece (uses and fills the per-thread word cache). With
  // starts, also appends each id's byte offset (base + offset in the piece), bypassing the cache.
  void encode_piece(std::string_view piece, std::vector<int32_t>& out, std::vector<size_t>* starts,
                    size_t base) const;
  // The uncached merge loop.
  void bpe(std::string_view piece, std::vector<int32_t>& out, std::vector<size_t>* starts, size_t base) const;
  // Encodes text with no special-token handling: UTF-8 runs through the pre-tokenizer, stretches
  // of malformed bytes as pieces of their own. With starts, also appends each id's byte offset
  // (relative to text, plus base).
  void encode_plain(std::string_view text, std::vector<int32_t>& out, std::vector<size_t>* starts,
                    size_t base) const;
};

// Loaders (data/tokenizer_load.cpp); each returns a finished Impl.
namespace tok {
std::unique_ptr<Tokenizer::Impl> load_hf_json(const std::string& path);
std::unique_ptr<Tokenizer::Impl> load_tiktoken(const std::string& path);
std::unique_ptr<Tokenizer::Impl> load_gguf(const std::string& path);
std::unique_ptr<Tokenizer::Impl> load_vocab_merges(const std::string& vocab_json, const std::string& merges_txt);
}  // namespace tok

}  // namespace bonsai
