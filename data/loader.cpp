// The training data loader (see data/loader.h for the sampling, order and state contract).
#include "data/loader.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include "core/error.h"

namespace bonsai {
namespace fs = std::filesystem;

namespace {

// Uniform in [0, n) from a 64-bit engine, without modulo bias: reject the lowest (2^64 mod n) draws.
uint64_t uniform_below(std::mt19937_64& rng, uint64_t n) {
  uint64_t threshold = (0 - n) % n;
  for (;;) {
    uint64_t r = rng();
    if (r >= threshold) return r % n;
  }
}

// SplitMix64 finaliser: nearby (seed, epoch) pairs give unrelated engine seeds.
uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

std::vector<std::string> shards_from_index(const fs::path& index) {
  std::ifstream in(index);
  if (!in) throw Error("cannot read '" + index.string() + "'");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error("'" + index.string() + "' is not valid JSON: " + e.what(), "pack the data again");
  }
  if (!j.is_object() || !j.contains("shards") || !j["shards"].is_array()) {
    throw Error("'" + index.string() + "' has no 'shards' list", "it should be the index.json that 'bonsai data pack' writes");
  }
  std::vector<std::string> out;
  for (const auto& s : j["shards"]) {
    if (!s.is_object() || !s.contains("file") || !s["file"].is_string()) {
      throw Error("'" + index.string() + "': every entry of 'shards' needs a string 'file'");
    }
    out.push_back((index.parent_path() / s["file"].get<std::string>()).string());
  }
  return out;
}

}  // namespace

std::vector<std::string> resolve_shard_paths(const std::string& entry) {
  fs::path p(entry);
  std::vector<std::string> out;
  if (fs::is_directory(p)) {
    if (fs::exists(p / "index.json")) {
      out = shards_from_index(p / "index.json");
    } else {
      for (const auto& e : fs::directory_iterator(p)) {
        std::string name = e.path().filename().string();
        if (name.rfind("shard-", 0) == 0 && e.path().extension() == ".h5") out.push_back(e.path().string());
      }
      std::sort(out.begin(), out.end());
    }
    if (out.empty()) {
      throw Error("data directory '" + entry + "' has no shards (no index.json, no shard-*.h5)",
                  "write one with 'bonsai data pack --config CONFIG.yaml'");
    }
    return out;
  }
  if (!fs::exists(p)) throw Error("data path '" + entry + "' does not exist", "give a directory written by 'bonsai data pack', its index.json, or a shard .h5");
  if (p.extension() == ".json") return shards_from_index(p);
  if (p.extension() == ".h5") return {entry};
  throw Error("data path '" + entry + "' is neither a directory, an index.json nor a .h5 shard");
}

LoaderState LoaderState::from_json(const std::string& json, const std::string& where) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json);
  } catch (const nlohmann::json::exception& e) {
    throw Error(where + " is not valid JSON: " + e.what());
  }
  LoaderState s;
  for (auto [key, field] : {std::pair{"epoch", &s.epoch}, {"position", &s.position}, {"seed", &s.seed}}) {
    if (!j.is_object() || !j.contains(key) || !j[key].is_number_unsigned()) {
      throw Error(where + ": field '" + key + "' is missing or not a non-negative integer",
                  "a loader state looks like {\"epoch\": 0, \"position\": 128, \"seed\": 1234}");
    }
    *field = j[key].get<uint64_t>();
  }
  return s;
}

std::string LoaderState::to_json() const {
  nlohmann::json j = {{"epoch", epoch}, {"position", position}, {"seed", seed}};
  return j.dump();
}

std::vector<uint64_t> Loader::permutation(uint64_t n, uint64_t seed, uint64_t epoch, bool shuffle) {
  std::vector<uint64_t> p(n);
  for (uint64_t i = 0; i < n; ++i) p[i] = i;
  if (!shuffle || n < 2) return p;
  std::mt19937_64 rng(mix64(seed ^ mix64(epoch)));
  for (uint64_t i = n - 1; i > 0; --i) std::swap(p[i], p[uniform_below(rng, i + 1)]);
  return p;
}

// ---- the data: shards, their sample index, reading one row --------------------------------------

namespace {

class SampleSource {
 public:
  explicit SampleSource(const LoaderOptions& opt);
  ShardKind kind() const { return kind_; }
  uint64_t num_samples() const { return num_samples_; }
  uint64_t total_tokens() const { return total_tokens_; }
  // Fills row `row` of `batch` (already sized) with sample `i`.
  void fill(uint64_t i, Batch& batch, int64_t row) const;

 private:
  void check_shard(const ShardReader& r, const LoaderOptions& opt);
  void fill_stream(uint64_t start, int32_t* out, int64_t n) const;
  void fill_doc(uint64_t i, ShardPart part, int32_t* tok, uint8_t* mask, int32_t* length) const;

  std::vector<ShardReader> shards_;
  std::vector<uint64_t> starts_;  // pretrain: first token of each shard; else first doc; + total
  ShardKind kind_ = ShardKind::pretrain;
  int64_t T_ = 0;
  int32_t pad_ = 0;
  uint64_t num_samples_ = 0, total_tokens_ = 0;
};

void SampleSource::check_shard(const ShardReader& r, const LoaderOptions& opt) {
  const ShardInfo& info = r.info();
  if (info.tokenizer_identity != opt.tokenizer_identity) {
    std::string model = opt.tokenizer_name.empty() ? "" : "'" + opt.tokenizer_name + "' ";
    throw Error("shard '" + r.path() + "' was packed with tokenizer '" + info.tokenizer_name + "' (" +
                    info.tokenizer_spec + ", identity " + info.tokenizer_identity + ") but the model's tokenizer " +
                    model + "has identity " + opt.tokenizer_identity,
                "token ids mean different things under different tokenizers: pack the data again with the "
                "model's tokenizer (bonsai data pack tokenizer=MODEL)");
  }
  if (shards_.empty()) {
    kind_ = info.kind;
  } else if (info.kind != kind_) {
    throw Error("shard '" + r.path() + "' holds " + shard_kind_name(info.kind) + " data but '" + shards_[0].path() +
                "' holds " + shard_kind_name(kind_), "one loader reads one kind of data; give them separate loaders");
  }
}

SampleSource::SampleSource(const LoaderOptions& opt) : T_(opt.seq_len), pad_(opt.pad_id) {
  if (opt.data.empty()) throw Error("loader: no data given", "set the data directories written by 'bonsai data pack'");
  for (const auto& entry : opt.data) {
    for (const auto& path : resolve_shard_paths(entry)) {
      ShardReader r(path);
      check_shard(r, opt);
      shards_.push_back(std::move(r));
    }
  }
  uint64_t at = 0;
  for (const auto& s : shards_) {
    starts_.push_back(at);
    at += kind_ == ShardKind::pretrain ? s.n_tokens() : s.n_docs();
    for (ShardPart p : shard_parts(kind_)) total_tokens_ += s.n_tokens(p);
  }
  starts_.push_back(at);
  if (kind_ == ShardKind::pretrain) {
    if (at < static_cast<uint64_t>(T_) + 1) {
      throw Error("loader: the data holds " + std::to_string(at) + " tokens, fewer than one sequence of seq_len + 1 = " +
                      std::to_string(T_ + 1), "pack more text or lower seq_len");
    }
    num_samples_ = (at - 1) / static_cast<uint64_t>(T_);
  } else {
    num_samples_ = at;
  }
}

void SampleSource::fill_stream(uint64_t start, int32_t* out, int64_t n) const {
  size_t s = std::upper_bound(starts_.begin(), starts_.end(), start) - starts_.begin() - 1;
  while (n > 0) {
    uint64_t local = start - starts_[s];
    uint64_t take = std::min<uint64_t>(static_cast<uint64_t>(n), shards_[s].n_tokens() - local);
    shards_[s].read_tokens(local, take, out);
    out += take, start += take, n -= static_cast<int64_t>(take);
    ++s;
  }
}

void SampleSource::fill_doc(uint64_t i, ShardPart part, int32_t* tok, uint8_t* mask, int32_t* length) const {
  size_t s = std::upper_bound(starts_.begin(), starts_.end(), i) - starts_.begin() - 1;
  const auto& off = shards_[s].doc_offsets(part);
  uint64_t d = i - starts_[s];
  uint64_t n = std::min<uint64_t>(off[d + 1] - off[d], static_cast<uint64_t>(T_) + 1);
  shards_[s].read_tokens(off[d], n, tok, part);
  shards_[s].read_loss_mask(off[d], n, mask, part);
  std::fill(tok + n, tok + T_ + 1, pad_);
  std::fill(mask + n, mask + T_ + 1, uint8_t{0});
  *length = static_cast<int32_t>(n);
}

void SampleSource::fill(uint64_t i, Batch& b, int64_t row) const {
  size_t at = static_cast<size_t>(row * (T_ + 1));
  if (kind_ == ShardKind::pretrain) {
    fill_stream(i * static_cast<uint64_t>(T_), b.tokens.data() + at, T_ + 1);
    std::fill(b.loss_mask.begin() + at, b.loss_mask.begin() + at + T_ + 1, uint8_t{1});
    b.lengths[row] = static_cast<int32_t>(T_ + 1);
  } else if (kind_ == ShardKind::sft) {
    fill_doc(i, ShardPart::main, b.tokens.data() + at, b.loss_mask.data() + at, &b.lengths[row]);
  } else {
    fill_doc(i, ShardPart::chosen, b.tokens.data() + at, b.loss_mask.data() + at, &b.lengths[row]);
    fill_doc(i, ShardPart::rejected, b.rejected_tokens.data() + at, b.rejected_loss_mask.data() + at,
             &b.rejected_lengths[row]);
  }
}

}  // namespace

// ---- the loader: order, state, prefetch ----------------------------------------------------------

struct Loader::Impl {
  LoaderOptions opt;
  std::unique_ptr<SampleSource> source;
  uint64_t usable = 0;  // samples per epoch after dropping N mod W

  // Producer side (the prefetch thread, or next() itself without prefetch).
  LoaderState cursor;
  std::vector<uint64_t> perm;
  uint64_t perm_epoch = UINT64_MAX, perm_seed = 0;

  // What next() has handed out.
  LoaderState consumed;

  struct Item {
    std::optional<Batch> batch;  // nullopt: the end
    LoaderState after;
    std::exception_ptr error;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Item> queue;
  bool stop = false;
  std::thread worker;
  std::exception_ptr failed;  // sticky: the worker's error, re-thrown on every next()
  bool ended = false;

  uint64_t batch_rows(const LoaderState& c) const;
  void normalize(LoaderState& c) const;
  Item produce();
  void start(const LoaderState& from);
  void halt();
  void run_worker();
};

uint64_t Loader::Impl::batch_rows(const LoaderState& c) const {
  auto W = static_cast<uint64_t>(opt.world_size), B = static_cast<uint64_t>(opt.batch_size);
  uint64_t remaining = c.position < usable ? usable - c.position : 0;
  uint64_t rows = std::min(B, remaining / W);
  return (opt.drop_last && rows < B) ? 0 : rows;
}

// Moves a cursor with no batch left in its epoch to the start of the next one.
void Loader::Impl::normalize(LoaderState& c) const {
  if (batch_rows(c) == 0) c.epoch += 1, c.position = 0;
}

Loader::Impl::Item Loader::Impl::produce() {
  Item item;
  if (opt.epochs > 0 && cursor.epoch >= static_cast<uint64_t>(opt.epochs)) {
    item.after = cursor;
    return item;
  }
  if (perm_epoch != cursor.epoch || perm_seed != cursor.seed) {
    perm = Loader::permutation(source->num_samples(), cursor.seed, cursor.epoch, opt.shuffle);
    perm_epoch = cursor.epoch, perm_seed = cursor.seed;
  }
  auto rows = static_cast<int64_t>(batch_rows(cursor));
  Batch b;
  b.B = rows, b.T = opt.seq_len, b.epoch = cursor.epoch;
  size_t cells = static_cast<size_t>(rows * (opt.seq_len + 1));
  b.tokens.resize(cells), b.loss_mask.resize(cells), b.lengths.resize(rows);
  if (source->kind() == ShardKind::preference) {
    b.rejected_tokens.resize(cells), b.rejected_loss_mask.resize(cells), b.rejected_lengths.resize(rows);
  }
  auto W = static_cast<uint64_t>(opt.world_size), r = static_cast<uint64_t>(opt.rank);
  for (int64_t j = 0; j < rows; ++j) {
    uint64_t sample = perm[cursor.position + static_cast<uint64_t>(j) * W + r];
    b.sample_ids.push_back(sample);
    source->fill(sample, b, j);
  }
  cursor.position += static_cast<uint64_t>(rows) * W;
  normalize(cursor);
  item.batch = std::move(b);
  item.after = cursor;
  return item;
}

void Loader::Impl::run_worker() {
  for (;;) {
    Item item;
    try {
      item = produce();
    } catch (...) {
      item.error = std::current_exception();
    }
    bool last = item.error != nullptr || !item.batch;
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return stop || queue.size() < static_cast<size_t>(opt.prefetch); });
    if (stop) return;
    queue.push_back(std::move(item));
    cv.notify_all();
    if (last) return;
  }
}

void Loader::Impl::start(const LoaderState& from) {
  cursor = from;
  normalize(cursor);
  consumed = cursor;
  failed = nullptr;
  ended = false;
  if (opt.prefetch > 0) {
    stop = false;
    worker = std::thread([this] { run_worker(); });
  }
}

void Loader::Impl::halt() {
  {
    std::lock_guard<std::mutex> lock(mu);
    stop = true;
  }
  cv.notify_all();
  if (worker.joinable()) worker.join();
  queue.clear();
}

Loader::Loader(LoaderOptions opt) : impl_(std::make_unique<Impl>()) {
  if (opt.tokenizer_identity.empty()) {
    throw Error("loader: the model's tokenizer identity is required", "pass Tokenizer::identity() of the model");
  }
  if (opt.batch_size <= 0 || opt.seq_len <= 0) {
    throw Error("loader: batch_size and seq_len must be positive (got " + std::to_string(opt.batch_size) + ", " +
                std::to_string(opt.seq_len) + ")");
  }
  if (opt.world_size <= 0 || opt.rank < 0 || opt.rank >= opt.world_size) {
    throw Error("loader: rank " + std::to_string(opt.rank) + " is not in [0, world_size = " +
                std::to_string(opt.world_size) + ")");
  }
  if (opt.prefetch < 0 || opt.epochs < 0) throw Error("loader: prefetch and epochs must not be negative");
  Impl& m = *impl_;
  m.opt = std::move(opt);
  m.source = std::make_unique<SampleSource>(m.opt);
  auto W = static_cast<uint64_t>(m.opt.world_size);
  m.usable = m.source->num_samples() / W * W;
  uint64_t per_rank = m.usable / W;
  uint64_t need = m.opt.drop_last ? static_cast<uint64_t>(m.opt.batch_size) : 1;
  if (per_rank < need) {
    throw Error("loader: " + std::to_string(m.source->num_samples()) + " samples over " + std::to_string(W) +
                    " ranks leave " + std::to_string(per_rank) + " per rank, fewer than one batch of " +
                    std::to_string(m.opt.batch_size),
                "use more data, a smaller batch_size or seq_len, or drop_last=false");
  }
  LoaderState s;
  s.seed = m.opt.seed;
  m.start(s);
}

Loader::~Loader() { impl_->halt(); }

ShardKind Loader::kind() const { return impl_->source->kind(); }
uint64_t Loader::num_samples() const { return impl_->source->num_samples(); }
uint64_t Loader::samples_per_rank() const { return impl_->usable / static_cast<uint64_t>(impl_->opt.world_size); }
uint64_t Loader::total_tokens() const { return impl_->source->total_tokens(); }
uint64_t Loader::batches_per_epoch() const {
  uint64_t per_rank = samples_per_rank(), B = static_cast<uint64_t>(impl_->opt.batch_size);
  return impl_->opt.drop_last ? per_rank / B : (per_rank + B - 1) / B;
}
LoaderState Loader::state() const { return impl_->consumed; }

std::optional<Batch> Loader::next() {
  Impl& m = *impl_;
  if (m.failed) std::rethrow_exception(m.failed);
  if (m.ended) return std::nullopt;
  Impl::Item item;
  if (m.opt.prefetch == 0) {
    try {
      item = m.produce();
    } catch (...) {
      m.failed = std::current_exception();
      throw;
    }
  } else {
    std::unique_lock<std::mutex> lock(m.mu);
    m.cv.wait(lock, [&] { return !m.queue.empty(); });
    item = std::move(m.queue.front());
    m.queue.pop_front();
    m.cv.notify_all();
  }
  if (item.error) {
    m.failed = item.error;
    std::rethrow_exception(item.error);
  }
  if (!item.batch) {
    m.ended = true;
    return std::nullopt;
  }
  m.consumed = item.after;
  return std::move(item.batch);
}

void Loader::restore(const LoaderState& s) {
  Impl& m = *impl_;
  if (s.position > m.source->num_samples()) {
    throw Error("loader: the state's position " + std::to_string(s.position) + " is beyond the " +
                    std::to_string(m.source->num_samples()) + " samples of an epoch",
                "was the state saved with other data or another seq_len?");
  }
  m.halt();
  m.start(s);
}

}  // namespace bonsai
