// Tests for data/shards: round trips of the three kinds (across chunk boundaries), write atomicity,
// every reader validation (missing attribute/dataset, wrong dtype, wrong version, inconsistent
// counts), truncated and bit-flipped files, and interop with h5py through scripts/ref/read_shard.py
// (skipped when BONSAI_PYTHON is not set).
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/shards.h"
#include "test_util.h"

namespace fs = std::filesystem;
using bonsai::ShardInfo;
using bonsai::ShardKind;
using bonsai::ShardPart;
using bonsai::ShardReader;
using bonsai::ShardWriter;

namespace {

using bonsai::test::error_of;

ShardInfo test_info(ShardKind kind) {
  ShardInfo i;
  i.kind = kind;
  i.tokenizer_identity = "test-identity-0001";
  i.tokenizer_name = "test-bpe";
  i.tokenizer_spec = "synthetic";
  i.vocab_size = 50000;
  i.eos_id = 0;
  i.sources_json = R"([{"path":"synthetic","format":"test"}])";
  i.created_by = "test_shards";
  return i;
}

// n documents of pseudo-random lengths in [1, max_len] and ids in [1, 50000).
std::vector<std::vector<int32_t>> make_docs(size_t n, size_t max_len, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::vector<int32_t>> docs(n);
  for (auto& d : docs) {
    d.resize(1 + rng() % max_len);
    for (auto& t : d) t = static_cast<int32_t>(1 + rng() % 49999);
  }
  return docs;
}

std::vector<uint8_t> make_mask(size_t n, uint32_t seed) {
  std::vector<uint8_t> m(n);
  for (size_t i = 0; i < n; ++i) m[i] = ((i * 7 + seed) % 3) != 0;
  return m;
}

std::string write_pretrain(const std::string& path, const std::vector<std::vector<int32_t>>& docs,
                           int64_t chunk = 1 << 20) {
  ShardWriter w(path, test_info(ShardKind::pretrain), {chunk, 4});
  for (const auto& d : docs) w.add_doc(d);
  w.commit();
  return path;
}

// Opens the shard and reads every token of every part: what a loader would touch.
void read_everything(const std::string& path) {
  ShardReader r(path);
  for (ShardPart p : bonsai::shard_parts(r.kind())) {
    std::vector<int32_t> buf(r.n_tokens(p));
    r.read_tokens(0, buf.size(), buf.data(), p);
    std::vector<uint8_t> mask(r.n_tokens(p));
    r.read_loss_mask(0, mask.size(), mask.data(), p);
  }
}

// Edits a finished shard with the HDF5 C API, to build invalid files.
template <class F>
void edit_shard(const std::string& path, F&& f) {
  hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  f(file);
  H5Fclose(file);
}

}  // namespace

TEST(Shards, PretrainRoundTripAcrossChunks) {
  auto dir = bonsai::test::scratch_dir("shards_pretrain");
  auto docs = make_docs(300, 40, 1);
  std::string path = write_pretrain(dir + "/s.h5", docs, /*chunk=*/97);
  ShardReader r(path);
  EXPECT_EQ(r.kind(), ShardKind::pretrain);
  EXPECT_EQ(r.n_docs(), docs.size());
  std::vector<int32_t> all;
  for (const auto& d : docs) all.insert(all.end(), d.begin(), d.end());
  EXPECT_EQ(r.n_tokens(), all.size());
  for (size_t i = 0; i < docs.size(); i += 37) EXPECT_EQ(r.read_doc(i), docs[i]) << "doc " << i;
  // A range that spans several 97-token chunks, and one ending exactly at the end.
  std::vector<int32_t> got(500);
  r.read_tokens(90, 500, got.data());
  EXPECT_TRUE(std::equal(got.begin(), got.end(), all.begin() + 90));
  r.read_tokens(all.size() - 500, 500, got.data());
  EXPECT_TRUE(std::equal(got.begin(), got.end(), all.end() - 500));
  EXPECT_FALSE(r.has_loss_mask());
  std::vector<uint8_t> ones(10);
  r.read_loss_mask(5, 10, ones.data());
  EXPECT_EQ(std::accumulate(ones.begin(), ones.end(), 0), 10);  // pretraining: every token counts
  const ShardInfo& info = r.info();
  EXPECT_EQ(info.tokenizer_identity, "test-identity-0001");
  EXPECT_EQ(info.tokenizer_name, "test-bpe");
  EXPECT_EQ(info.vocab_size, 50000);
  EXPECT_EQ(info.eos_id, 0);
  EXPECT_EQ(info.bos_id, -1);
  EXPECT_EQ(info.created_by, "test_shards");
  EXPECT_EQ(info.sources_json, R"([{"path":"synthetic","format":"test"}])");
}

TEST(Shards, SftAndPreferenceRoundTrip) {
  auto dir = bonsai::test::scratch_dir("shards_sft");
  auto docs = make_docs(50, 30, 2);
  {
    ShardWriter w(dir + "/sft.h5", test_info(ShardKind::sft), {16, 6});
    for (size_t i = 0; i < docs.size(); ++i) {
      auto m = make_mask(docs[i].size(), static_cast<uint32_t>(i));
      w.add_doc(docs[i], &m);
    }
    EXPECT_FALSE(fs::exists(dir + "/sft.h5")) << "the final name appears only at commit";
    EXPECT_TRUE(fs::exists(dir + "/sft.h5.tmp." + std::to_string(::getpid())));
    w.commit();
  }
  EXPECT_FALSE(fs::exists(dir + "/sft.h5.tmp." + std::to_string(::getpid())));
  ShardReader r(dir + "/sft.h5");
  EXPECT_EQ(r.kind(), ShardKind::sft);
  EXPECT_TRUE(r.has_loss_mask());
  for (size_t i = 0; i < docs.size(); ++i) {
    ASSERT_EQ(r.read_doc(i), docs[i]);
    ASSERT_EQ(r.read_doc_mask(i), make_mask(docs[i].size(), static_cast<uint32_t>(i)));
  }
  std::string e = error_of([&] { r.read_doc(0, ShardPart::chosen); });
  EXPECT_NE(e.find("has no token stream '/chosen'"), std::string::npos) << e;

  auto rej = make_docs(50, 30, 3);
  {
    ShardWriter w(dir + "/pref.h5", test_info(ShardKind::preference));
    for (size_t i = 0; i < docs.size(); ++i) {
      w.add_pair(docs[i], make_mask(docs[i].size(), 1), rej[i], make_mask(rej[i].size(), 2));
    }
    w.commit();
  }
  ShardReader p(dir + "/pref.h5");
  EXPECT_EQ(p.n_docs(), docs.size());
  for (size_t i = 0; i < docs.size(); i += 7) {
    EXPECT_EQ(p.read_doc(i, ShardPart::chosen), docs[i]);
    EXPECT_EQ(p.read_doc(i, ShardPart::rejected), rej[i]);
    EXPECT_EQ(p.read_doc_mask(i, ShardPart::rejected), make_mask(rej[i].size(), 2));
  }
  e = error_of([&] { p.n_tokens(ShardPart::main); });
  EXPECT_NE(e.find("kind preference"), std::string::npos) << e;
}

TEST(Shards, WriterRefusesBadInputAndCleansUp) {
  auto dir = bonsai::test::scratch_dir("shards_writer");
  std::string tmp = dir + "/a.h5.tmp." + std::to_string(::getpid());
  {
    ShardWriter w(dir + "/a.h5", test_info(ShardKind::pretrain));
    std::vector<int32_t> bad = {5, 50000};
    std::string e = error_of([&] { w.add_doc(bad); });
    EXPECT_NE(e.find("token id 50000 is outside the vocabulary [0, 50000)"), std::string::npos) << e;
    std::vector<uint8_t> mask = {1, 1};
    std::vector<int32_t> ok = {1, 2};
    e = error_of([&] { w.add_doc(ok, &mask); });
    EXPECT_NE(e.find("pretrain shard has no loss mask"), std::string::npos) << e;
    EXPECT_TRUE(fs::exists(tmp));
  }  // never committed
  EXPECT_FALSE(fs::exists(tmp)) << "an abandoned shard must not leave its temporary file";
  EXPECT_FALSE(fs::exists(dir + "/a.h5"));
  std::string e = error_of([&] { ShardWriter w(dir + "/no/such/dir/a.h5", test_info(ShardKind::sft)); });
  EXPECT_NE(e.find("cannot create the file"), std::string::npos) << e;
  EXPECT_NE(e.find("no/such/dir/a.h5"), std::string::npos) << e;
}

TEST(Shards, ReaderNamesMissingAndMistypedParts) {
  auto dir = bonsai::test::scratch_dir("shards_invalid");
  auto docs = make_docs(20, 10, 4);
  auto fresh = [&](const std::string& name) { return write_pretrain(dir + "/" + name, docs); };

  std::string p = fresh("no_format.h5");
  edit_shard(p, [](hid_t f) { H5Adelete(f, "bonsai_format"); });
  std::string e = error_of([&] { ShardReader r(p); });
  EXPECT_NE(e.find("attribute 'bonsai_format' is missing"), std::string::npos) << e;
  EXPECT_NE(e.find(p), std::string::npos) << e;

  p = fresh("version.h5");
  edit_shard(p, [](hid_t f) {
    int64_t v = 7;
    hid_t a = H5Aopen(f, "version", H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a);
  });
  e = error_of([&] { ShardReader r(p); });
  EXPECT_NE(e.find("format version 7; this build reads version 1"), std::string::npos) << e;

  p = fresh("no_offsets.h5");
  edit_shard(p, [](hid_t f) { H5Ldelete(f, "doc_offsets", H5P_DEFAULT); });
  e = error_of([&] { ShardReader r(p); });
  EXPECT_NE(e.find("dataset 'doc_offsets' is missing"), std::string::npos) << e;

  p = fresh("dtype.h5");
  edit_shard(p, [](hid_t f) {
    H5Ldelete(f, "tokens", H5P_DEFAULT);
    hsize_t n = 4;
    hid_t sp = H5Screate_simple(1, &n, nullptr);
    hid_t d = H5Dcreate2(f, "tokens", H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(d);
    H5Sclose(sp);
  });
  e = error_of([&] { ShardReader r(p); });
  EXPECT_NE(e.find("dataset 'tokens' has dtype int64, expected uint32"), std::string::npos) << e;

  p = fresh("count.h5");
  edit_shard(p, [](hid_t f) {
    uint64_t v = 3;
    hid_t a = H5Aopen(f, "n_docs", H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_UINT64, &v);
    H5Aclose(a);
  });
  e = error_of([&] { ShardReader r(p); });
  EXPECT_NE(e.find("'doc_offsets' has 21 elements, expected n_docs + 1 = 4"), std::string::npos) << e;

  e = error_of([&] { ShardReader r(dir + "/absent.h5"); });
  EXPECT_NE(e.find("does not exist"), std::string::npos) << e;
  std::ofstream(dir + "/text.h5") << "just some text, not HDF5\n";
  e = error_of([&] { ShardReader r(dir + "/text.h5"); });
  EXPECT_NE(e.find("is not a readable HDF5 file"), std::string::npos) << e;
}

// A shard cut short anywhere (a crash, a full disk, an interrupted copy) must fail loudly, naming
// the file, whether the damage is in the header, the chunk index or the token chunks.
TEST(Shards, TruncatedFileIsAnError) {
  auto dir = bonsai::test::scratch_dir("shards_trunc");
  std::string src = write_pretrain(dir + "/full.h5", make_docs(2000, 100, 5), 1 << 14);
  auto size = fs::file_size(src);
  ASSERT_GT(size, 100000u);
  for (double frac : {0.02, 0.3, 0.6, 0.95, 0.999}) {
    std::string p = dir + "/cut" + std::to_string(static_cast<int>(frac * 1000)) + ".h5";
    fs::copy_file(src, p);
    fs::resize_file(p, static_cast<uintmax_t>(static_cast<double>(size) * frac));
    std::string e = error_of([&] { read_everything(p); });
    EXPECT_NE(e.find("shard '" + p + "'"), std::string::npos) << "cut at " << frac << ": " << e;
  }
}

// A flipped byte anywhere (header, attributes, chunk index, token chunks) is either reported,
// naming the file, or lands in unused space and changes nothing that is read: never silently
// different tokens, never a crash inside HDF5.
TEST(Shards, FlippedBytesAreAnErrorOrHarmless) {
  auto dir = bonsai::test::scratch_dir("shards_flip");
  std::string p = write_pretrain(dir + "/full.h5", make_docs(2000, 100, 6), 1 << 14);
  std::vector<int32_t> ref;
  std::vector<uint64_t> ref_offsets;
  {
    ShardReader r(p);
    ref.resize(r.n_tokens());
    r.read_tokens(0, ref.size(), ref.data());
    ref_offsets = r.doc_offsets();
  }
  auto size = static_cast<std::streamoff>(fs::file_size(p));
  std::vector<std::streamoff> offsets;
  for (std::streamoff at = 0; at < 6000; at += 7) offsets.push_back(at);  // metadata, index
  for (std::streamoff at = 6000; at < size; at += size / 200) offsets.push_back(at);  // chunks
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  int detected = 0;
  for (std::streamoff at : offsets) {
    char b;
    f.seekg(at), f.read(&b, 1), f.seekp(at), f.put(static_cast<char>(b ^ 0x5A)), f.flush();
    try {
      ShardReader r(p);
      std::vector<int32_t> got(r.n_tokens());
      r.read_tokens(0, got.size(), got.data());
      EXPECT_TRUE(got == ref && r.doc_offsets() == ref_offsets) << "flip at byte " << at << " went unnoticed";
    } catch (const bonsai::Error& e) {
      ++detected;
      EXPECT_NE(std::string(e.what()).find("shard '" + p + "'"), std::string::npos) << e.what();
    }
    f.seekp(at), f.put(b), f.flush();
  }
  EXPECT_GT(detected, static_cast<int>(offsets.size()) / 2);
  // The middle of the file is token chunks: Fletcher-32 names it.
  std::string e = error_of([&] {
    char b;
    f.seekg(size / 2), f.read(&b, 1), f.seekp(size / 2), f.put(static_cast<char>(b ^ 1)), f.flush();
    read_everything(p);
  });
  EXPECT_NE(e.find("cannot read dataset 'tokens'"), std::string::npos) << e;
  EXPECT_NE(e.find("corrupt"), std::string::npos) << e;
}

// h5py reads our shards and agrees with our reader on attributes, shapes, dtypes and contents.
TEST(Shards, H5pyReadsTheSameData) {
  const char* py = bonsai::test::env_cstr("BONSAI_PYTHON");
  std::string src_dir = bonsai::test::env_dir("BONSAI_SOURCE_DIR");
  if (py == nullptr || src_dir.empty() || !fs::exists(py)) {
    GTEST_SKIP() << "BONSAI_PYTHON ('" << (py ? py : "") << "') / BONSAI_SOURCE_DIR not set or missing: no h5py to compare with";
  }
  auto dir = bonsai::test::scratch_dir("shards_h5py");
  auto docs = make_docs(400, 60, 7);
  std::string path = dir + "/sft.h5";
  {
    ShardWriter w(path, test_info(ShardKind::sft), {1000, 4});
    for (size_t i = 0; i < docs.size(); ++i) {
      auto m = make_mask(docs[i].size(), static_cast<uint32_t>(i));
      w.add_doc(docs[i], &m);
    }
    w.commit();
  }
  std::string cmd = std::string(py) + " " + src_dir + "/scripts/ref/read_shard.py " + path + " 16 2>&1";
  FILE* pipe = ::popen(cmd.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, pipe)) out.append(buf, n);
  ASSERT_EQ(::pclose(pipe), 0) << out;
  auto j = nlohmann::json::parse(out);

  ShardReader r(path);
  EXPECT_EQ(j["attrs"]["bonsai_format"], "tokens-v1");
  EXPECT_EQ(j["attrs"]["version"], 1);
  EXPECT_EQ(j["attrs"]["kind"], "sft");
  EXPECT_EQ(j["attrs"]["tokenizer_identity"], r.info().tokenizer_identity);
  EXPECT_EQ(j["attrs"]["n_docs"], r.n_docs());
  EXPECT_EQ(j["attrs"]["n_tokens"], r.n_tokens());
  auto& tok = j["datasets"]["tokens"];
  EXPECT_EQ(tok["dtype"], "uint32");
  EXPECT_EQ(tok["shape"][0], r.n_tokens());
  EXPECT_EQ(tok["compression"], "gzip");
  EXPECT_TRUE(tok["shuffle"].get<bool>());
  EXPECT_TRUE(tok["fletcher32"].get<bool>());
  std::vector<int32_t> all(r.n_tokens());
  r.read_tokens(0, all.size(), all.data());
  uint64_t sum = 0;
  for (int32_t t : all) sum += static_cast<uint64_t>(t);
  EXPECT_EQ(tok["sum"].get<uint64_t>(), sum);
  for (size_t i = 0; i < 16; ++i) EXPECT_EQ(tok["first"][i].get<int32_t>(), all[i]);
  EXPECT_EQ(j["datasets"]["doc_offsets"]["dtype"], "uint64");
  EXPECT_EQ(j["datasets"]["doc_offsets"]["shape"][0], r.n_docs() + 1);
  EXPECT_EQ(j["datasets"]["loss_mask"]["dtype"], "uint8");
  std::vector<uint8_t> mask(r.n_tokens());
  r.read_loss_mask(0, mask.size(), mask.data());
  EXPECT_EQ(j["datasets"]["loss_mask"]["sum"].get<uint64_t>(), std::accumulate(mask.begin(), mask.end(), uint64_t{0}));
}
