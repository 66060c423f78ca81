// Tests for data/loader: the sample layout of the three kinds (pretraining windows across shard
// boundaries, sft/preference padding and truncation), the seeded permutation (pinned values),
// disjoint equal per-rank splits, exact resumption (also on another world size), the background
// thread's error propagation and shutdown, and the tokenizer check. Shards are written with
// ShardWriter; token ids are stream positions so every row can be checked.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/loader.h"
#include "data/shards.h"
#include "test_util.h"

namespace fs = std::filesystem;
using bonsai::Batch;
using bonsai::Loader;
using bonsai::LoaderOptions;
using bonsai::LoaderState;
using bonsai::ShardInfo;
using bonsai::ShardKind;
using bonsai::ShardWriter;

namespace {

using bonsai::test::error_of;

const char* kIdentity = "test-identity-loader";

ShardInfo info(ShardKind kind, int64_t index = 0, const std::string& identity = kIdentity) {
  ShardInfo i;
  i.kind = kind;
  i.tokenizer_identity = identity;
  i.tokenizer_name = "test-bpe";
  i.tokenizer_spec = "synthetic";
  i.vocab_size = 1 << 30;
  i.shard_index = index;
  return i;
}

// Pretraining shards whose concatenated stream is 0, 1, ..., sum(sizes) - 1, cut into documents
// of 1..37 tokens; one document crosses each shard boundary, as the packer does it.
std::string write_stream(const std::string& name, const std::vector<int64_t>& sizes) {
  std::string dir = bonsai::test::scratch_dir(name);
  int32_t next = 0;
  int64_t doc_left = 0, doc_no = 0;
  for (size_t s = 0; s < sizes.size(); ++s) {
    char file[32];
    std::snprintf(file, sizeof file, "/shard-%05zu.h5", s);
    ShardInfo si = info(ShardKind::pretrain, static_cast<int64_t>(s));
    si.first_doc_continues = doc_left > 0;
    ShardWriter w(dir + file, si, {64, 1});
    int64_t left = sizes[s];
    while (left > 0) {
      if (doc_left == 0) doc_left = 1 + (doc_no++ * 13) % 37;
      int64_t n = std::min(doc_left, left);
      std::vector<int32_t> ids(static_cast<size_t>(n));
      std::iota(ids.begin(), ids.end(), next);
      w.add_doc(ids);
      next += static_cast<int32_t>(n), left -= n, doc_left -= n;
    }
    w.commit();
  }
  return dir;
}

LoaderOptions options(const std::string& dir, int64_t B, int64_t T) {
  LoaderOptions o;
  o.data = {dir};
  o.tokenizer_identity = kIdentity;
  o.batch_size = B;
  o.seq_len = T;
  o.seed = 1234;
  return o;
}

std::vector<Batch> take(Loader& l, int n) {
  std::vector<Batch> out;
  for (int i = 0; i < n; ++i) {
    auto b = l.next();
    if (!b) break;
    out.push_back(std::move(*b));
  }
  return out;
}

void expect_same(const std::vector<Batch>& a, const std::vector<Batch>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].sample_ids, b[i].sample_ids) << "batch " << i;
    EXPECT_EQ(a[i].tokens, b[i].tokens) << "batch " << i;
    EXPECT_EQ(a[i].epoch, b[i].epoch) << "batch " << i;
  }
}

}  // namespace

TEST(Loader, PretrainRowsAreStrideTWindowsAcrossShards) {
  std::string dir = write_stream("loader_windows", {300, 300, 400});
  auto o = options(dir, 4, 16);
  o.shuffle = false;
  o.prefetch = 0;
  Loader l(o);
  EXPECT_EQ(l.kind(), ShardKind::pretrain);
  EXPECT_EQ(l.num_samples(), 999u / 16);  // (tokens - 1) / T
  EXPECT_EQ(l.batches_per_epoch(), 62u / 4);
  EXPECT_EQ(l.total_tokens(), 1000u);
  for (uint64_t k = 0; k < l.batches_per_epoch(); ++k) {
    Batch b = *l.next();
    ASSERT_EQ(b.B, 4);
    ASSERT_EQ(b.T, 16);
    ASSERT_EQ(b.tokens.size(), 4u * 17);
    for (int64_t r = 0; r < 4; ++r) {
      uint64_t s = b.sample_ids[r];
      EXPECT_EQ(s, k * 4 + static_cast<uint64_t>(r));
      for (int64_t j = 0; j <= 16; ++j) ASSERT_EQ(b.tokens[r * 17 + j], static_cast<int32_t>(s * 16 + j)) << "sample " << s;
      EXPECT_EQ(b.lengths[r], 17);
    }
    EXPECT_TRUE(std::all_of(b.loss_mask.begin(), b.loss_mask.end(), [](uint8_t m) { return m == 1; }));
  }
  EXPECT_EQ(l.state().epoch, 1u) << "the epoch rolls over once its last full batch is handed out";
}

// The order is part of the reproducibility contract: these values must not change between
// platforms, compilers or standard libraries.
TEST(Loader, PermutationIsOurOwnAndPinned) {
  std::vector<uint64_t> p = Loader::permutation(10, 42, 0);
  EXPECT_EQ(p, (std::vector<uint64_t>{9, 6, 2, 0, 1, 4, 3, 8, 5, 7}));
  EXPECT_EQ(Loader::permutation(10, 42, 0, /*shuffle=*/false), (std::vector<uint64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  auto big = Loader::permutation(1000, 7, 3);
  auto sorted = big;
  std::sort(sorted.begin(), sorted.end());
  for (uint64_t i = 0; i < 1000; ++i) ASSERT_EQ(sorted[i], i);
  EXPECT_NE(big, Loader::permutation(1000, 7, 4)) << "each epoch has its own order";
  EXPECT_NE(big, Loader::permutation(1000, 8, 3)) << "each seed has its own order";
  EXPECT_EQ(big, Loader::permutation(1000, 7, 3));
}

TEST(Loader, ShuffledEpochVisitsEverySampleOnce) {
  std::string dir = write_stream("loader_epoch", {500, 500});
  auto o = options(dir, 3, 10);  // 99 samples, 33 batches
  Loader l(o);
  ASSERT_EQ(l.batches_per_epoch(), 33u);
  std::vector<uint64_t> seen0, seen1;
  for (auto& b : take(l, 33)) seen0.insert(seen0.end(), b.sample_ids.begin(), b.sample_ids.end());
  for (auto& b : take(l, 33)) seen1.insert(seen1.end(), b.sample_ids.begin(), b.sample_ids.end());
  EXPECT_EQ(seen0, Loader::permutation(99, 1234, 0));
  EXPECT_EQ(seen1, Loader::permutation(99, 1234, 1));
  std::sort(seen0.begin(), seen0.end());
  for (uint64_t i = 0; i < 99; ++i) ASSERT_EQ(seen0[i], i);
}

TEST(Loader, RanksAreDisjointEqualAndInterleaved) {
  std::string dir = write_stream("loader_ranks", {631});
  const int64_t W = 3, B = 2;
  auto perm = Loader::permutation(63, 1234, 0);  // (631 - 1) / 10 = 63 samples -> 21 per rank
  std::set<uint64_t> all;
  for (int64_t r = 0; r < W; ++r) {
    auto o = options(dir, B, 10);
    o.rank = r, o.world_size = W;
    Loader l(o);
    EXPECT_EQ(l.samples_per_rank(), 21u);
    EXPECT_EQ(l.batches_per_epoch(), 10u);  // 21 / 2, the last sample dropped with drop_last
    auto batches = take(l, 10);
    for (size_t k = 0; k < batches.size(); ++k) {
      for (int64_t j = 0; j < B; ++j) {
        uint64_t s = batches[k].sample_ids[j];
        EXPECT_EQ(s, perm[k * B * W + j * W + r]);
        EXPECT_TRUE(all.insert(s).second) << "sample " << s << " given to two ranks";
      }
    }
  }
  EXPECT_EQ(all.size(), 60u);
}

TEST(Loader, ResumeContinuesExactly) {
  std::string dir = write_stream("loader_resume", {400, 400});
  for (int64_t prefetch : {0, 3}) {
    auto o = options(dir, 4, 12);  // 66 samples, 16 batches per epoch: 2N = 40 spans two epochs
    o.prefetch = prefetch;
    const int N = 20;
    Loader a(o);
    auto straight = take(a, 2 * N);
    Loader b(o);
    auto first = take(b, N);
    std::string saved = b.state().to_json();
    auto o2 = o;
    o2.seed = 999;  // the seed comes from the state
    Loader c(o2);
    c.restore(LoaderState::from_json(saved));
    auto second = take(c, N);
    first.insert(first.end(), second.begin(), second.end());
    expect_same(straight, first);
    EXPECT_EQ(a.state(), c.state()) << "prefetch " << prefetch;
    EXPECT_EQ(a.state().epoch, 2u);
  }
}

// position counts permutation entries of all ranks, so a job can resume on another world size:
// the new ranks continue the same permutation right after what was consumed, still disjoint.
TEST(Loader, RestoreOnAnotherWorldSize) {
  std::string dir = write_stream("loader_elastic", {1000});
  const int64_t B = 2;
  LoaderState saved;
  for (int64_t r = 0; r < 2; ++r) {
    auto o = options(dir, B, 8);
    o.rank = r, o.world_size = 2;
    Loader l(o);
    take(l, 5);
    saved = l.state();
  }
  EXPECT_EQ(saved.position, 5u * B * 2);
  auto perm = Loader::permutation(124, 1234, 0);  // (1000 - 1) / 8
  std::set<uint64_t> next;
  for (int64_t r = 0; r < 4; ++r) {
    auto o = options(dir, B, 8);
    o.rank = r, o.world_size = 4;
    Loader l(o);
    l.restore(saved);
    Batch b = *l.next();
    next.insert(b.sample_ids.begin(), b.sample_ids.end());
  }
  std::set<uint64_t> expected(perm.begin() + 20, perm.begin() + 28);
  EXPECT_EQ(next, expected);
}

TEST(Loader, SftRowsArePaddedTruncatedAndMasked) {
  std::string dir = bonsai::test::scratch_dir("loader_sft");
  const int64_t T = 8;
  std::vector<std::vector<int32_t>> docs = {{1, 2, 3}, {10, 11, 12, 13, 14, 15, 16, 17, 18}, {}};
  for (int i = 0; i < 14; ++i) docs[2].push_back(100 + i);  // longer than T + 1
  {
    ShardWriter w(dir + "/shard-00000.h5", info(ShardKind::sft));
    for (const auto& d : docs) {
      std::vector<uint8_t> m(d.size(), 0);
      for (size_t i = d.size() / 2; i < d.size(); ++i) m[i] = 1;  // "assistant" second half
      w.add_doc(d, &m);
    }
    w.commit();
  }
  auto o = options(dir, 3, T);
  o.shuffle = false, o.pad_id = 77;
  Loader l(o);
  Batch b = *l.next();
  ASSERT_EQ(b.B, 3);
  EXPECT_EQ(b.lengths, (std::vector<int32_t>{3, 9, 9}));
  auto row = [&](int r) { return std::vector<int32_t>(b.tokens.begin() + r * 9, b.tokens.begin() + r * 9 + 9); };
  auto mrow = [&](int r) { return std::vector<uint8_t>(b.loss_mask.begin() + r * 9, b.loss_mask.begin() + r * 9 + 9); };
  EXPECT_EQ(row(0), (std::vector<int32_t>{1, 2, 3, 77, 77, 77, 77, 77, 77}));
  EXPECT_EQ(mrow(0), (std::vector<uint8_t>{0, 1, 1, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(row(1), docs[1]);
  EXPECT_EQ(mrow(1), (std::vector<uint8_t>{0, 0, 0, 0, 1, 1, 1, 1, 1}));
  EXPECT_EQ(row(2), (std::vector<int32_t>{100, 101, 102, 103, 104, 105, 106, 107, 108}));  // right-truncated
  EXPECT_EQ(mrow(2), (std::vector<uint8_t>{0, 0, 0, 0, 0, 0, 0, 1, 1}));
  EXPECT_TRUE(b.rejected_tokens.empty());
}

TEST(Loader, PreferenceRowsCarryBothSides) {
  std::string dir = bonsai::test::scratch_dir("loader_pref");
  {
    ShardWriter w(dir + "/shard-00000.h5", info(ShardKind::preference));
    for (int i = 0; i < 4; ++i) {
      std::vector<int32_t> c = {5, 6, 100 + i}, r = {5, 6, 200 + i, 201 + i};
      w.add_pair(c, {0, 0, 1}, r, {0, 0, 1, 1});
    }
    w.commit();
  }
  auto o = options(dir, 2, 5);
  o.pad_id = 0;
  Loader l(o);
  EXPECT_EQ(l.kind(), ShardKind::preference);
  EXPECT_EQ(l.num_samples(), 4u);
  Batch b = *l.next();
  for (int r = 0; r < 2; ++r) {
    auto i = static_cast<int32_t>(b.sample_ids[r]);
    std::vector<int32_t> c(b.tokens.begin() + r * 6, b.tokens.begin() + r * 6 + 6);
    std::vector<int32_t> rj(b.rejected_tokens.begin() + r * 6, b.rejected_tokens.begin() + r * 6 + 6);
    EXPECT_EQ(c, (std::vector<int32_t>{5, 6, 100 + i, 0, 0, 0}));
    EXPECT_EQ(rj, (std::vector<int32_t>{5, 6, 200 + i, 201 + i, 0, 0}));
    EXPECT_EQ(b.lengths[r], 3);
    EXPECT_EQ(b.rejected_lengths[r], 4);
    EXPECT_EQ(b.rejected_loss_mask[r * 6 + 3], 1);
  }
}

TEST(Loader, RefusesShardsOfAnotherTokenizer) {
  std::string dir = bonsai::test::scratch_dir("loader_tok");
  {
    ShardWriter w(dir + "/shard-00000.h5", info(ShardKind::pretrain, 0, "identity-of-gpt2"));
    std::vector<int32_t> ids(100, 1);
    w.add_doc(ids);
    w.commit();
  }
  auto o = options(dir, 1, 8);
  o.tokenizer_identity = "identity-of-llama3";
  o.tokenizer_name = "llama-bpe";
  std::string e = error_of([&] { Loader l(o); });
  EXPECT_NE(e.find("shard-00000.h5' was packed with tokenizer 'test-bpe'"), std::string::npos) << e;
  EXPECT_NE(e.find("identity-of-gpt2"), std::string::npos) << e;
  EXPECT_NE(e.find("'llama-bpe' has identity identity-of-llama3"), std::string::npos) << e;
}

TEST(Loader, RefusesMixedKindsAndBadPaths) {
  std::string a = write_stream("loader_mixed_a", {100});
  std::string b = bonsai::test::scratch_dir("loader_mixed_b");
  {
    ShardWriter w(b + "/shard-00000.h5", info(ShardKind::sft));
    std::vector<int32_t> ids = {1, 2};
    std::vector<uint8_t> m = {0, 1};
    w.add_doc(ids, &m);
    w.commit();
  }
  auto o = options(a, 1, 8);
  o.data.push_back(b);
  std::string e = error_of([&] { Loader l(o); });
  EXPECT_NE(e.find("holds sft data but"), std::string::npos) << e;

  std::string empty = bonsai::test::scratch_dir("loader_empty");
  e = error_of([&] { Loader l(options(empty, 1, 8)); });
  EXPECT_NE(e.find("has no shards (no index.json, no shard-*.h5)"), std::string::npos) << e;
  e = error_of([&] { Loader l(options(empty + "/nope", 1, 8)); });
  EXPECT_NE(e.find("does not exist"), std::string::npos) << e;
  e = error_of([&] { Loader l(options(a, 1, 100)); });
  EXPECT_NE(e.find("holds 100 tokens, fewer than one sequence of seq_len + 1 = 101"), std::string::npos) << e;
  e = error_of([&] { Loader l(options(a, 50, 8)); });
  EXPECT_NE(e.find("fewer than one batch of 50"), std::string::npos) << e;
}

TEST(Loader, ReadsTheShardsAnIndexLists) {
  std::string dir = write_stream("loader_index", {200, 200});
  // The index names only the second shard: the loader must follow it, not the directory listing.
  std::ofstream(dir + "/index.json") << R"({"shards": [{"file": "shard-00001.h5"}]})";
  auto o = options(dir, 1, 9);
  o.shuffle = false;
  Loader l(o);
  EXPECT_EQ(l.total_tokens(), 200u);
  EXPECT_EQ(l.next()->tokens[0], 200);
  std::ofstream(dir + "/index.json") << R"({"files": []})";
  std::string e = error_of([&] { Loader l2(o); });
  EXPECT_NE(e.find("index.json' has no 'shards' list"), std::string::npos) << e;
}

TEST(Loader, EpochLimitAndPartialLastBatch) {
  std::string dir = write_stream("loader_epochs", {631});  // 63 samples of T = 10
  auto o = options(dir, 4, 10);
  o.epochs = 1, o.drop_last = false;
  Loader l(o);
  EXPECT_EQ(l.batches_per_epoch(), 16u);
  auto batches = take(l, 100);
  ASSERT_EQ(batches.size(), 16u);
  EXPECT_EQ(batches.back().B, 3);
  EXPECT_EQ(batches.back().tokens.size(), 3u * 11);
  EXPECT_FALSE(l.next().has_value());
  EXPECT_FALSE(l.next().has_value());
}

// The background thread reads a damaged chunk: next() re-throws its error, and keeps doing so.
TEST(Loader, ThreadErrorsAreRethrownInNext) {
  std::string dir = bonsai::test::scratch_dir("loader_corrupt");
  std::string path = dir + "/shard-00000.h5";
  {
    ShardWriter w(path, info(ShardKind::pretrain), {1 << 12, 1});
    std::vector<int32_t> ids(50000);  // incompressible, so token chunks fill most of the file
    uint32_t x = 1;
    for (auto& t : ids) t = static_cast<int32_t>((x = x * 1664525u + 1013904223u) >> 2);
    w.add_doc(ids);
    w.commit();
  }
  auto size = static_cast<std::streamoff>(fs::file_size(path));
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    for (std::streamoff at = size * 3 / 10; at < size * 9 / 10; at += size / 50) f.seekp(at), f.put('\x55');
  }
  auto o = options(dir, 8, 64);
  o.shuffle = false, o.prefetch = 2;
  Loader l(o);  // opening reads only attributes and offsets
  std::string e1 = error_of([&] { while (l.next()) {} });
  EXPECT_NE(e1.find("shard '" + path + "'"), std::string::npos) << e1;
  EXPECT_NE(e1.find("corrupt"), std::string::npos) << e1;
  EXPECT_EQ(error_of([&] { l.next(); }), e1);
}

TEST(Loader, ShutsDownWithAFullQueueAndRestoresMidFlight) {
  std::string dir = write_stream("loader_shutdown", {2000});
  auto o = options(dir, 2, 8);
  o.prefetch = 2;
  for (int i = 0; i < 20; ++i) {
    Loader l(o);
    if (i % 2) l.next();  // sometimes the worker is mid-batch, sometimes blocked on the full queue
  }
  Loader l(o);
  auto first = take(l, 3);
  l.restore(LoaderState{0, 0, 1234});
  expect_same(first, take(l, 3));
}

TEST(Loader, StateJson) {
  LoaderState s{3, 4096, 18446744073709551615ull};
  EXPECT_EQ(LoaderState::from_json(s.to_json()), s);
  EXPECT_EQ(s.to_json(), R"({"epoch":3,"position":4096,"seed":18446744073709551615})");
  std::string e = error_of([] { LoaderState::from_json("{\"epoch\": 1", "run/state.json"); });
  EXPECT_NE(e.find("run/state.json is not valid JSON"), std::string::npos) << e;
  e = error_of([] { LoaderState::from_json(R"({"epoch": 1, "seed": 2})", "run/state.json"); });
  EXPECT_NE(e.find("run/state.json: field 'position' is missing"), std::string::npos) << e;
  e = error_of([] { LoaderState::from_json(R"({"epoch": -1, "position": 0, "seed": 2})"); });
  EXPECT_NE(e.find("field 'epoch' is missing or not a non-negative integer"), std::string::npos) << e;
}
