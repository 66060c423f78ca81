// The training data loader: reads bonsai token shards (data/shards.h) into fixed-shape batches, in a
// seeded shuffled order, split disjointly across ranks, resumable from a small JSON state, with a
// background thread reading ahead. Torch-free: batches are plain vectors the trainer converts.
//
// Samples
//   pretrain    the shards' token streams concatenated (documents separated by the EOS the packer
//               put there) and cut into sequences of seq_len + 1 tokens with stride seq_len:
//               sample i is stream[i*T, i*T + T + 1), so every token is a target exactly once and
//               the samples per epoch are (total_tokens - 1) / T. Loss mask all ones.
//   sft         one example per sample, padded with pad_id (loss mask 0) to seq_len + 1 tokens.
//   preference  one pair per sample: the chosen and the rejected chat, each padded like sft.
//   Truncation (sft, preference): an example longer than seq_len + 1 tokens keeps its first
//   seq_len + 1 (right truncation, so the prompt survives and the response is cut); an example whose
//   response lies entirely beyond the cut has no loss-mask ones left and contributes no loss.
// Rows: every row holds T + 1 = seq_len + 1 tokens. The model reads tokens[:, :T] and predicts
// tokens[:, 1:]; loss_mask[:, 1:] says which predictions count; lengths[b] is the number of real
// (unpadded) tokens of row b.
//
// Order
//   Epoch e visits a permutation of all samples: Fisher-Yates driven by std::mt19937_64 seeded from
//   (seed, e) with our own unbiased bounded draw, so the order is the same on every platform and
//   standard library (shuffle=false: the identity). Rank r of W takes positions r, r + W, r + 2W,
//   ... of the permutation: each step consumes batch_size * W consecutive positions, rank r gets
//   those with (position - r) % W == 0. The last (N mod W) samples of an epoch are dropped so every
//   rank sees the same number; with drop_last, a final partial batch is dropped too.
// State: {epoch, position, seed}, position counting permutation entries consumed by all ranks
//   together. It therefore means the same thing for any world size: restoring on a different W
//   continues the same permutation, disjointly.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "data/shards.h"

namespace bonsai {

struct LoaderOptions {
  // Each entry: a directory written by `bonsai data pack` (its index.json lists the shards; without
  // one, its shard-*.h5 in name order), an index.json, or one .h5 shard. Several are concatenated.
  std::vector<std::string> data;
  // The model's tokenizer (Tokenizer::identity(), and a name for messages): shards packed with
  // another tokenizer are refused. Required.
  std::string tokenizer_identity;
  std::string tokenizer_name;
  int64_t batch_size = 8;
  int64_t seq_len = 2048;       // T: rows hold T + 1 tokens
  uint64_t seed = 0;
  bool shuffle = true;
  int64_t rank = 0, world_size = 1;
  int32_t pad_id = 0;           // sft/preference padding (masked out, so any id works)
  bool drop_last = true;        // drop a final partial batch of an epoch
  int64_t epochs = 0;           // 0: repeat forever; else next() ends after this many epochs
  int64_t prefetch = 4;         // batches read ahead on a background thread; 0: read in next()
};

struct LoaderState {
  uint64_t epoch = 0;
  uint64_t position = 0;  // permutation entries consumed by all ranks in this epoch
  uint64_t seed = 0;
  std::string to_json() const;
  // Throws bonsai::Error naming `where` on malformed JSON or missing/ill-typed fields.
  static LoaderState from_json(const std::string& json, const std::string& where = "loader state");
  bool operator==(const LoaderState& o) const {
    return epoch == o.epoch && position == o.position && seed == o.seed;
  }
};

struct Batch {
  int64_t B = 0, T = 0;             // B rows of T + 1 tokens (B may be short at an epoch's end without drop_last)
  std::vector<int32_t> tokens;      // [B, T + 1] row-major
  std::vector<uint8_t> loss_mask;   // [B, T + 1]
  std::vector<int32_t> lengths;     // [B]
  // preference only: the rejected side, same shapes (tokens/loss_mask/lengths above are chosen)
  std::vector<int32_t> rejected_tokens;
  std::vector<uint8_t> rejected_loss_mask;
  std::vector<int32_t> rejected_lengths;
  std::vector<uint64_t> sample_ids;  // [B] which sample each row is (global sample index)
  uint64_t epoch = 0;
};

class Loader {
 public:
  explicit Loader(LoaderOptions opt);
  ~Loader();  // stops and joins the prefetch thread
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  ShardKind kind() const;
  uint64_t num_samples() const;        // per epoch, before the per-rank split
  uint64_t samples_per_rank() const;   // per epoch
  uint64_t batches_per_epoch() const;  // per rank
  uint64_t total_tokens() const;       // in all shards (preference: chosen + rejected)

  // The next batch for this rank; nullopt once `epochs` epochs are done. Errors of the background
  // thread (a corrupt shard) are re-thrown here, and again on every later call.
  std::optional<Batch> next();
  // Where the batches returned so far leave off (batches read ahead but not returned don't count).
  LoaderState state() const;
  // Continues exactly after `s` (also with another world size, rank or seed-less options: the seed
  // comes from the state).
  void restore(const LoaderState& s);

  // The permutation of epoch `epoch` for `seed` over `n` samples (exposed for tests and tools).
  static std::vector<uint64_t> permutation(uint64_t n, uint64_t seed, uint64_t epoch, bool shuffle = true);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// The shard files a data entry names (see LoaderOptions::data), in order.
std::vector<std::string> resolve_shard_paths(const std::string& entry);

}  // namespace bonsai
