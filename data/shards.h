// bonsai token shards: the HDF5 files `bonsai data pack` writes and the training loader reads.
// Torch-free. Every HDF5 failure becomes a bonsai::Error naming the file and the dataset; HDF5's own
// error printing is switched off.
//
// ---- Format "tokens-v1" (one file per shard, e.g. out_dir/shard-00000.h5) -----------------------
// Root attributes
//   bonsai_format        string  "tokens-v1"                (what this file is)
//   version              int64   1                          (bumped on incompatible changes)
//   kind                 string  pretrain | sft | preference
//   tokenizer_identity   string  Tokenizer::identity() of the tokenizer that produced the ids
//   tokenizer_name       string  its pre-tokenizer name ("gpt-2", "llama-bpe", ...), for messages
//   tokenizer_spec       string  the tokenizer path/name given to the packer
//   vocab_size           int64   the tokenizer's vocabulary size (every id is below it)
//   bos_id, eos_id       int64   -1 when the tokenizer has none
//   sources              string  JSON: [{"path", "format", "files": [...], options...}, ...]
//   created_by           string  the command line and the resolved config
//   shard_index          int64   position of this shard in its pack (0-based)
//   n_docs               uint64  documents (sft: examples; preference: pairs)
//   n_tokens             uint64  tokens in this file (preference: chosen + rejected)
//   first_doc_continues  uint8   pretrain only: 1 when document 0 began in the previous shard
//                                (the packer fills pretraining shards to exactly shard_tokens and
//                                cuts the document at the boundary; the token stream stays intact)
//   attrs_checksum       uint64  FNV-1a over the string attributes, in the order above (a second
//                                guard: large attributes go to HDF5's dense attribute storage)
// String attributes are fixed-length UTF-8 (h5py reads them as bytes): variable-length strings would
// live in HDF5's global heap, which has no checksum and on which HDF5 crashes when it is damaged.
// Datasets, kind pretrain / sft (at the root):
//   tokens       uint32 [n_tokens]     all documents concatenated (pretrain: EOS after each, when
//                                      the pack asked for it)
//   doc_offsets  uint64 [n_docs + 1]   document i is tokens[doc_offsets[i] : doc_offsets[i+1]];
//                                      doc_offsets[0] = 0, doc_offsets[n_docs] = n_tokens
//   loss_mask    uint8  [n_tokens]     sft (required): 1 where the loss applies (assistant tokens)
// Kind preference: two groups, /chosen and /rejected, each holding tokens, doc_offsets and loss_mask
// as above with the same n_docs. Pair i is chosen doc i and rejected doc i; each is the whole chat
// (shared prompt + that response) and its loss_mask is 1 only on the final response's tokens, so
// the prompt is the tokens before the first 1.
// Storage: HDF5 1.10 file format (every metadata structure and the chunk index carry checksums;
// readable by HDF5 >= 1.10, i.e. any current h5py). Every dataset is chunked (16K elements by
// default) with the shuffle, deflate and Fletcher-32 filters, so a flipped byte anywhere is reported
// as corruption rather than read as tokens. Files are written to "<name>.tmp.<pid>" and renamed only
// once complete.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace bonsai {

inline constexpr const char* kShardFormat = "tokens-v1";
inline constexpr int64_t kShardVersion = 1;

enum class ShardKind { pretrain, sft, preference };
std::string shard_kind_name(ShardKind k);
// "pretrain" | "sft" | "preference"; anything else throws naming `where`, with a "did you mean".
ShardKind parse_shard_kind(const std::string& s, const std::string& where);

// Which token stream of a shard: `main` for pretrain/sft, `chosen`/`rejected` for preference.
enum class ShardPart { main, chosen, rejected };

// The root attributes (counts excluded: the writer computes them, the reader checks them).
struct ShardInfo {
  ShardKind kind = ShardKind::pretrain;
  std::string tokenizer_identity, tokenizer_name, tokenizer_spec;
  int64_t vocab_size = 0;
  int64_t bos_id = -1, eos_id = -1;
  std::string sources_json = "[]";
  std::string created_by;
  int64_t shard_index = 0;
  bool first_doc_continues = false;
};

struct ShardWriterOptions {
  // HDF5 chunk of `tokens` / `loss_mask`, in elements. A read decompresses whole chunks, and a
  // shuffled loader reads one random row (seq_len + 1 tokens) at a time: measured on 12M GPT-2
  // tokens, rows of 2049 at 16K-token chunks load at 8.7M tokens/s, at 64K 2.0M, at 256K 0.54M,
  // at 1M 0.12M, while the file grows by only 2.6% from 256K to 16K chunks.
  int64_t chunk_tokens = 1 << 14;
  int compression_level = 1;       // deflate 0..9 (token ids after the shuffle filter: 1 is ~3% larger than 4, much faster)
};

// Writes one shard incrementally: memory stays at about one chunk whatever the shard's size.
class ShardWriter {
 public:
  ShardWriter(const std::string& path, ShardInfo info, ShardWriterOptions opt = {});
  ~ShardWriter();  // without commit(): closes and removes the temporary file
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  // pretrain (mask must be null) or sft (mask required, same length). Ids must be in [0, vocab_size).
  void add_doc(const int32_t* ids, size_t n, const uint8_t* mask = nullptr);
  void add_doc(const std::vector<int32_t>& ids, const std::vector<uint8_t>* mask = nullptr) {
    add_doc(ids.data(), ids.size(), mask ? mask->data() : nullptr);
  }
  // preference: one pair, each side a full chat with its loss mask.
  void add_pair(const std::vector<int32_t>& chosen, const std::vector<uint8_t>& chosen_mask,
                const std::vector<int32_t>& rejected, const std::vector<uint8_t>& rejected_mask);

  uint64_t n_docs() const;
  uint64_t n_tokens() const;  // all parts together
  const std::string& path() const;
  // Flushes, writes the count attributes, closes, fsyncs and renames into place.
  void commit();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Opens a shard and checks it: format, version, kind, every dataset present with the right dtype
// and rank, and the counts consistent with doc_offsets. Reads are hyperslabs (only what is asked
// for is decompressed). Safe to use from one thread at a time.
class ShardReader {
 public:
  explicit ShardReader(const std::string& path);
  ~ShardReader();
  ShardReader(ShardReader&&) noexcept;
  ShardReader& operator=(ShardReader&&) noexcept;

  const std::string& path() const;
  const ShardInfo& info() const;
  ShardKind kind() const { return info().kind; }
  uint64_t n_docs() const;
  uint64_t n_tokens(ShardPart part = ShardPart::main) const;
  bool has_loss_mask(ShardPart part = ShardPart::main) const;
  const std::vector<uint64_t>& doc_offsets(ShardPart part = ShardPart::main) const;

  // tokens[start, start + count) of `part` into `out` (ids as int32). Out-of-range throws.
  void read_tokens(uint64_t start, uint64_t count, int32_t* out, ShardPart part = ShardPart::main) const;
  // The loss mask over the same range; all ones for a part that has none (pretraining).
  void read_loss_mask(uint64_t start, uint64_t count, uint8_t* out, ShardPart part = ShardPart::main) const;
  std::vector<int32_t> read_doc(uint64_t i, ShardPart part = ShardPart::main) const;
  std::vector<uint8_t> read_doc_mask(uint64_t i, ShardPart part = ShardPart::main) const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// The parts a shard of `kind` has: {main} or {chosen, rejected}.
std::vector<ShardPart> shard_parts(ShardKind kind);
std::string shard_part_name(ShardPart part);  // "tokens" group path: "/", "/chosen", "/rejected"

}  // namespace bonsai
