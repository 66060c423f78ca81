// Tests for data/pack (`bonsai data pack`): pretraining packs of the shared C4 sample checked token
// for token against the tokenizer, shard cutting, thread-count independence, text split modes,
// gzip and JSON-array inputs; SFT and preference packs through the chat template (masks cover
// exactly the replies); and every input error (invalid JSON with file:line, missing field with
// record number, empty input, unknown format, a tokenizer mismatch at load time, a truncated
// shard). Needs $BONSAI_SHARED_DATA (skips with the reason otherwise).
#include <gtest/gtest.h>
#include <zlib.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/loader.h"
#include "data/pack.h"
#include "data/shards.h"
#include "data/tokenizer.h"
#include "test_util.h"

namespace fs = std::filesystem;
using bonsai::PackConfig;
using bonsai::PackSource;
using bonsai::ShardPart;
using bonsai::ShardReader;
using bonsai::Tokenizer;
using nlohmann::json;

namespace {

using bonsai::test::error_of;

std::string gpt2(const std::string& data) { return data + "/tokenizer/gpt2/ggml-vocab-gpt-2.gguf"; }

const Tokenizer& gpt2_tokenizer(const std::string& data) {
  static Tokenizer tok = Tokenizer::load(gpt2(data));
  return tok;
}

void write_file(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

void write_gz(const std::string& path, const std::string& text) {
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, text.data(), static_cast<unsigned>(text.size()));
  gzclose(f);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

PackConfig config(const std::string& data, const std::string& out, const std::string& kind,
                  std::vector<PackSource> sources) {
  PackConfig c;
  c.tokenizer = gpt2(data);
  c.output = out;
  c.kind = kind;
  c.sources = std::move(sources);
  c.threads = 2;
  c.overwrite = true;
  c.created_by = "test_pack";
  return c;
}

PackSource source(const std::string& path, const std::string& format) {
  PackSource s;
  s.path = path;
  s.format = format;
  return s;
}

// Every shard of a pack, in index order.
std::vector<ShardReader> open_pack(const std::string& dir) {
  std::vector<ShardReader> out;
  for (const auto& p : bonsai::resolve_shard_paths(dir)) out.emplace_back(p);
  return out;
}

std::vector<int32_t> all_tokens(const std::string& dir, ShardPart part = ShardPart::main) {
  std::vector<int32_t> all;
  for (auto& r : open_pack(dir)) {
    std::vector<int32_t> t(r.n_tokens(part));
    r.read_tokens(0, t.size(), t.data(), part);
    all.insert(all.end(), t.begin(), t.end());
  }
  return all;
}

}  // namespace

// The C4 sample, cut into shards of 50k tokens: the stream equals encode(text) + EOS per record,
// shards are exactly full, the documents cut at a boundary are flagged, index.json agrees.
TEST(Pack, PretrainJsonlMatchesTheTokenizerAcrossShards) {
  BONSAI_REQUIRE_DIR("BONSAI_SHARED_DATA", data);
  std::string out = bonsai::test::scratch_dir("pack_c4");
  auto cfg = config(data, out, "pretrain", {source(data + "/text/c4_demo.jsonl", "jsonl")});
  cfg.shard_tokens = 50000;
  auto stats = bonsai::pack_dataset(cfg);
  const Tokenizer& tok = gpt2_tokenizer(data);

  std::vector<int32_t> expected;
  std::ifstream in(data + "/text/c4_demo.jsonl");
  std::string line;
  uint64_t docs = 0;
  while (std::getline(in, line)) {
    auto ids = tok.encode(json::parse(line)["text"].get<std::string>());
    expected.insert(expected.end(), ids.begin(), ids.end());
    expected.push_back(tok.eos_id());
    ++docs;
  }
  EXPECT_EQ(stats.docs, docs);
  EXPECT_EQ(stats.tokens, expected.size());
  EXPECT_EQ(all_tokens(out), expected);

  auto shards = open_pack(out);
  ASSERT_EQ(shards.size(), (expected.size() + 49999) / 50000);
  EXPECT_EQ(stats.shards, shards.size());
  uint64_t eos_seen = 0;
  for (size_t i = 0; i < shards.size(); ++i) {
    if (i + 1 < shards.size()) {
      EXPECT_EQ(shards[i].n_tokens(), 50000u);
    }
    EXPECT_EQ(shards[i].info().shard_index, static_cast<int64_t>(i));
    EXPECT_EQ(shards[i].info().tokenizer_identity, tok.identity());
    EXPECT_EQ(shards[i].info().tokenizer_name, "gpt-2");
    EXPECT_EQ(shards[i].info().created_by, "test_pack");
    // A shard's first document continues the previous one exactly when that one did not end in EOS.
    if (i > 0) {
      auto prev = shards[i - 1].read_doc(shards[i - 1].n_docs() - 1);
      EXPECT_EQ(shards[i].info().first_doc_continues, prev.back() != tok.eos_id()) << "shard " << i;
    }
    for (uint64_t d = 0; d < shards[i].n_docs(); ++d) eos_seen += shards[i].read_doc(d).back() == tok.eos_id();
  }
  EXPECT_EQ(eos_seen, docs);
  EXPECT_EQ(tok.decode(shards[0].read_doc(0)),
            json::parse(read_file(data + "/text/c4_demo.jsonl").substr(0, read_file(data + "/text/c4_demo.jsonl").find('\n')))["text"].get<std::string>() +
                "<|endoftext|>");

  json index = json::parse(read_file(out + "/index.json"));
  EXPECT_EQ(index["n_tokens"], expected.size());
  EXPECT_EQ(index["n_docs"], docs);
  EXPECT_EQ(index["shards"].size(), shards.size());
  EXPECT_EQ(index["shards"][0]["file"], "shard-00000.h5");
  EXPECT_EQ(index["tokenizer_identity"], tok.identity());
  EXPECT_EQ(index["config"]["sources"][0]["field"], "text");
  EXPECT_FALSE(fs::exists(out + "/shard-00000.h5.tmp." + std::to_string(::getpid())));
}

TEST(Pack, OutputDoesNotDependOnThreadsAndGzipIsTransparent) {
  BONSAI_REQUIRE_DIR("BONSAI_SHARED_DATA", data);
  std::string dir = bonsai::test::scratch_dir("pack_threads");
  write_gz(dir + "/c4.jsonl.gz", read_file(data + "/text/c4_demo.jsonl"));
  auto one = config(data, dir + "/one", "pretrain", {source(data + "/text/c4_demo.jsonl", "jsonl")});
  one.threads = 1;
  auto three = config(data, dir + "/three", "pretrain", {source(dir + "/c4.jsonl.gz", "jsonl")});
  three.threads = 3;
  bonsai::pack_dataset(one);
  auto stats = bonsai::pack_dataset(three);
  EXPECT_EQ(all_tokens(dir + "/one"), all_tokens(dir + "/three"));
  EXPECT_EQ(stats.bytes_read, fs::file_size(data + "/text/c4_demo.jsonl")) << "bytes are counted uncompressed";
}

TEST(Pack, TextSplitModes) {
  BONSAI_REQUIRE_DIR("BONSAI_SHARED_DATA", data);
  std::string dir = bonsai::test::scratch_dir("pack_text");
  write_file(dir + "/a.txt", "\xEF\xBB\xBFOne line.\r\nSecond line.\r\n\r\n\r\nThird, after blanks.\n   \nLast\n");
  write_file(dir + "/b.txt", "");
  const Tokenizer& tok = gpt2_tokenizer(data);
  struct Case {
    std::string split;
    std::vector<std::string> docs;
  };
  std::vector<Case> cases = {
      {"line", {"One line.", "Second line.", "Third, after blanks.", "Last"}},
      {"paragraph", {"One line.\nSecond line.", "Third, after blanks.", "Last"}},
      {"file", {"One line.\nSecond line.\n\n\nThird, after blanks.\n   \nLast"}},
  };
  for (const auto& c : cases) {
    PackSource s = source(dir + "/*.txt", "text");
    s.split = c.split;
    auto cfg = config(data, dir + "/out_" + c.split, "pretrain", {s});
    cfg.eos_between_docs = false;
    auto stats = bonsai::pack_dataset(cfg);
    auto shards = open_pack(dir + "/out_" + c.split);
    ASSERT_EQ(shards[0].n_docs(), c.docs.size()) << c.split;
    for (size_t i = 0; i < c.docs.size(); ++i) EXPECT_EQ(tok.decode(shards[0].read_doc(i)), c.docs[i]) << c.split;
    if (c.split == "file") {
      EXPECT_EQ(stats.skipped["empty document"], 1u) << "b.txt is empty";
    }
  }
}

// A pretty-printed JSON array is streamed element by element and gives what JSONL gives.
TEST(Pack, JsonArrayInputEqualsJsonl) {
  BONSAI_REQUIRE_DIR("BONSAI_SHARED_DATA", data);
  std::string dir = bonsai::test::scratch_dir("pack_array");
  json arr = json::array();
  std::string jsonl;
  std::ifstream in(data + "/text/c4_demo.jsonl");
  std::string line;
  for (int i = 0; i < 40 && std::getline(in, line); ++i) {
    arr.push_back(json::parse(line));
    jsonl += line + "\n";
  }
  write_file(dir + "/a.json", arr.dump(2));
  write_file(dir + "/a.jsonl", jsonl);
  bonsai::pack_dataset(config(data, dir + "/arr", "pretrain", {source(dir + "/a.json", "jsonl")}));
  bonsai::pack_dataset(config(data, dir + "/lines", "pretrain", {source(dir + "/a.jsonl", "jsonl")}));
  EXPECT_EQ(all_tokens(dir + "/arr"), all_tokens(dir + "/lines"));
  EXPECT_EQ(open_pack(dir + "/arr")[0].n_docs(), 40u);
}

TEST(Pack, InputErrorsNameFileLineAndRecord) {
  BONSAI_REQUIRE_DIR("BONSAI_SHARED_DATA", data);
  std::string dir = bonsai::test::scratch_dir("pack_errors");
  auto pack = [&](const std::string& file, const std::string& format, const std::string& kind = "pretrain") {
    return error_of([&] { bonsai::pack_dataset(config(data, dir + "/out", kind, {source(file, format)})); });
  };
  write_file(dir + "/bad.jsonl", "{\"text\": \"a\"}\n\n{\"text\": \"b\"}\n{\"text\": \"c\",}\n");
  std::string e = pack(dir + "/bad.jsonl", "jsonl");
  EXPECT_NE(e.find("bad.jsonl:4: invalid JSON in record 3"), std::string::npos) << e;

  write_file(dir + "/bad.json", "[\n  {\"text\": \"a\"},\n  {\"text\":\n    \"b\" \"c\"}\n]\n");
  e = pack(dir + "/bad.json", "jsonl");
  EXPECT_NE(e.find("bad.json:4: invalid JSON in record 2"), std::string::npos) << e;

  write_file(dir + "/cut.json", "[\n  {\"text\": \"a\"},\n  {\"text\": \"b");
  e = pack(dir + "/cut.json", "jsonl");
  EXPECT_NE(e.find("cut.json:3: the JSON array ends before its closing ']'"), std::string::npos) << e;

  write_file(dir + "/field.jsonl", "{\"text\": \"a\"}\n{\"body\": \"b\", \"id\": 2}\n");
  e = pack(dir + "/field.jsonl", "jsonl");
  EXPECT_NE(e.find("field.jsonl:2 (record 2): record has no field 'text' (its fields: body, id)"), std::string::npos) << e;
  EXPECT_NE(e.find("set field in the source"), std::string::npos) << e;

  write_file(dir + "/empty.jsonl", "\n\n");
  e = pack(dir + "/empty.jsonl", "jsonl");
  EXPECT_NE(e.find("the sources hold no documents"), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(dir + "/out/index.json")) << "a failed pack leaves no index";

  e = pack(dir + "/field.jsonl", "jsnol");
  EXPECT_NE(e.find("format is 'jsnol', expected one of: text, jsonl"), std::string::npos) << e;
  EXPECT_NE(e.find("did you mean 'jsonl'?"), std::string::npos) << e;
  e = pack(dir + "/field.jsonl", "alpaca");
  EXPECT_NE(e.find("format 'alpaca' makes sft data, but kind is 'pretrain'"), std::string::npos) << e;
  e = pack(dir + "/nothing-*.jsonl", "jsonl");
  EXPECT_NE(e.find("no file matches"), std::string::npos) << e;

  write_file(dir + "/long.jsonl", "{\"text\": \"" + std::string(3000, 'x') + "\"}\n");
  auto small = config(data, dir + "/out", "pretrain", {source(dir + "/long.jsonl", "jsonl")});
  small.max_doc_bytes = 1000;
  e = error_of([&] { bonsai::pack_dataset(small); });
  EXPECT_NE(e.find("long.jsonl:1: a line or record is longer than max_doc_bytes = 1000 bytes"), std::string::npos) << e;

  std::string gz = read_file(data + "/preference/harmless-base_test.jsonl.gz");
  write_file(dir + "/cut.jsonl.gz", gz.substr(0, gz.size() / 2));
  PackSource cut = source(dir + "/cut.jsonl.gz", "jsonl");
  cut.field = "chosen";
  e = error_of([&] { bonsai::pack_dataset(config(data, dir + "/out", "pretrain", {cut})); });
  EXPECT_NE(e.find("cannot read '" + dir + "/cut.jsonl.gz'"), std::string::npos) << e;
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
}

// An error late in the input (after shards were written) leaves no partial pack behind.
TEST(Pack, AFailedPackLeavesNoShards) {
  BONSAI_REQUIRE_DIR("BONSAI_SHARED_DATA", data);
  std::string dir = bonsai::test::scratch_dir("pack_fail");
  std::string lines;
  for (int i = 0; i < 9000; ++i) lines += "{\"text\": \"record number " + std::to_string(i) + "\"}\n";
  write_file(dir + "/in.jsonl", lines + "{\"text\": oops}\n");
  auto cfg = config(data, dir + "/out", "pretrain", {source(dir + "/in.jsonl", "jsonl")});
  cfg.shard_tokens = 1000;
  std::string e = error_of([&] { bonsai::pack_dataset(cfg); });
  EXPECT_NE(e.find("in.jsonl:9001: invalid JSON in record 9001"), std::string::npos) << e;
  ASSERT_TRUE(fs::is_directory(dir + "/out"));
  EXPECT_TRUE(fs::is_empty(dir + "/out")) << "found " << fs::directory_iterator(dir + "/out")->path();
}

TEST(Pack, RefusesToMixWithAnEarlierPack) {
  BONSAI_REQUIRE_DIR("BONSAI_SHARED_DATA", data);
  std::string dir = bonsai::test::scratch_dir("pack_twice");
  auto cfg = config(data, dir, "pretrain", {source(data + "/text/c4_demo.jsonl", "jsonl")});
  cfg.limit = 3;
  bonsai::pack_dataset(cfg);
  cfg.overwrite = false;
  std::string e = error_of([&] { bonsai::pack_dataset(cfg); });
  EXPECT_NE(e.find("already holds a packed dataset"), std::string::npos) << e;
  EXPECT_NE(e.find("overwrite=true"), std::string::npos) << e;
}

// Shards packed with GPT-2 are refused by a loader for a StarCoder model, naming both; a shard cut
// short is refused naming the file.
TEST(Pack, LoaderRefusesOtherTokenizerAndTruncatedShard) {
  BONSAI_REQUIRE_DIR("BONSAI_SHARED_DATA", data);
  std::string dir = bonsai::test::scratch_dir("pack_load");
  auto cfg = config(data, dir, "pretrain", {source(data + "/text/c4_demo.jsonl", "jsonl")});
  bonsai::pack_dataset(cfg);
  Tokenizer star = Tokenizer::load(data + "/tokenizer/starcoder/ggml-vocab-starcoder.gguf");
  bonsai::LoaderOptions o;
  o.data = {dir};
  o.tokenizer_identity = star.identity();
  o.tokenizer_name = star.pre_tokenizer_name();
  o.batch_size = 2, o.seq_len = 64;
  std::string e = error_of([&] { bonsai::Loader l(o); });
  EXPECT_NE(e.find("was packed with tokenizer 'gpt-2'"), std::string::npos) << e;
  EXPECT_NE(e.find(gpt2_tokenizer(data).identity()), std::string::npos) << e;
  EXPECT_NE(e.find("'starcoder' has identity " + star.identity()), std::string::npos) << e;

  o.tokenizer_identity = gpt2_tokenizer(data).identity();
  bonsai::Loader ok(o);
  EXPECT_EQ(ok.next()->tokens.size(), 2u * 65);
  fs::resize_file(dir + "/shard-00000.h5", fs::file_size(dir + "/shard-00000.h5") - 1000);
  e = error_of([&] { bonsai::Loader l(o); });
  EXPECT_NE(e.find("shard '" + dir + "/shard-00000.h5'"), std::string::npos) << e;
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
}

// ---- sft / preference through the chat template ---------------------------------------------------

// The decoded text of the tokens whose mask is `want`.
std::string masked_text(const Tokenizer& tok, const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask,
                        uint8_t want) {
  std::vector<int32_t> sel;
  for (size_t i = 0; i < ids.size(); ++i)
    if (mask[i] == want) sel.push_back(ids[i]);
  return tok.decode(sel);
}

TEST(Pack, SftMasksCoverExactlyTheReplies) {
  BONSAI_REQUIRE_DIR("BONSAI_SHARED_DATA", data);
  std::string out = bonsai::test::scratch_dir("pack_sft");
  auto cfg = config(data, out, "sft",
                    {source(data + "/sft/alpaca_tiny.json", "alpaca"), source(data + "/sft/dummy_conversation.json", "sharegpt")});
  cfg.chat_template = "chatml";
  auto stats = bonsai::pack_dataset(cfg);
  EXPECT_EQ(stats.docs, 600u);
  const Tokenizer& tok = gpt2_tokenizer(data);
  auto shards = open_pack(out);
  ASSERT_EQ(shards.size(), 1u);
  EXPECT_EQ(shards[0].kind(), bonsai::ShardKind::sft);
  json alpaca = json::parse(read_file(data + "/sft/alpaca_tiny.json"));
  for (size_t i : {0, 17, 99}) {
    auto ids = shards[0].read_doc(i);
    auto mask = shards[0].read_doc_mask(i);
    std::string reply = masked_text(tok, ids, mask, 1), prompt = masked_text(tok, ids, mask, 0);
    EXPECT_EQ(reply, alpaca[i]["output"].get<std::string>() + "<|im_end|>") << "alpaca " << i;
    EXPECT_NE(prompt.find(alpaca[i]["instruction"].get<std::string>()), std::string::npos) << prompt;
    EXPECT_EQ(prompt.find(alpaca[i]["output"].get<std::string>()), std::string::npos) << "the reply is not in the prompt";
  }
  json chats = json::parse(read_file(data + "/sft/dummy_conversation.json"));
  for (size_t i : {0, 250, 499}) {
    auto ids = shards[0].read_doc(100 + i);
    std::string reply = masked_text(tok, ids, shards[0].read_doc_mask(100 + i), 1);
    std::string expected;
    for (const auto& m : chats[i]["conversations"])
      if (m["from"] == "gpt") expected += m["value"].get<std::string>() + "<|im_end|>";
    EXPECT_EQ(reply, expected) << "sharegpt " << i;
  }
  // The loader serves it: rows padded with the mask off.
  bonsai::LoaderOptions o;
  o.data = {out};
  o.tokenizer_identity = tok.identity();
  o.batch_size = 4, o.seq_len = 512, o.pad_id = tok.eos_id();
  bonsai::Loader l(o);
  auto b = *l.next();
  for (int r = 0; r < 4; ++r) {
    int ones = 0;
    for (int j = 0; j < 513; ++j) ones += b.loss_mask[r * 513 + j];
    EXPECT_GT(ones, 0);
    if (b.lengths[r] < 513) {
      EXPECT_EQ(b.tokens[r * 513 + 512], tok.eos_id());
    }
  }
}

TEST(Pack, PreferencePairsShareThePromptAndMaskTheFinalReply) {
  BONSAI_REQUIRE_DIR("BONSAI_SHARED_DATA", data);
  std::string out = bonsai::test::scratch_dir("pack_pref");
  PackSource se = source(data + "/preference/stack_exchange_paired_tiny.json", "paired");
  se.prompt_field = "question", se.chosen_field = "response_j", se.rejected_field = "response_k";
  auto cfg = config(data, out, "preference",
                    {source(data + "/preference/dpo_en_demo.json", "sharegpt_pairs"), se,
                     source(data + "/preference/harmless-base_test.jsonl.gz", "hh_rlhf")});
  cfg.chat_template = "chatml";
  auto stats = bonsai::pack_dataset(cfg);
  // hh-rlhf's test split has 5 pairs whose two dialogues differ before the final reply.
  EXPECT_EQ(stats.skipped["preference pair whose dialogues differ before the final reply"], 5u);
  EXPECT_EQ(stats.docs, 300u + 25u + 2312u - 5u);
  const Tokenizer& tok = gpt2_tokenizer(data);
  auto shards = open_pack(out);
  ASSERT_EQ(shards.size(), 1u);
  const ShardReader& r = shards[0];
  json dpo = json::parse(read_file(data + "/preference/dpo_en_demo.json"));
  json sep = json::parse(read_file(data + "/preference/stack_exchange_paired_tiny.json"));
  struct Want {
    uint64_t pair;
    std::string chosen, rejected;
  };
  for (const Want& w : {Want{0, dpo[0]["chosen"]["value"], dpo[0]["rejected"]["value"]},
                        Want{299, dpo[299]["chosen"]["value"], dpo[299]["rejected"]["value"]},
                        Want{312, sep[12]["response_j"], sep[12]["response_k"]}}) {
    auto c = r.read_doc(w.pair, ShardPart::chosen), j = r.read_doc(w.pair, ShardPart::rejected);
    auto cm = r.read_doc_mask(w.pair, ShardPart::chosen), jm = r.read_doc_mask(w.pair, ShardPart::rejected);
    EXPECT_EQ(masked_text(tok, c, cm, 1), w.chosen + "<|im_end|>") << "pair " << w.pair;
    EXPECT_EQ(masked_text(tok, j, jm, 1), w.rejected + "<|im_end|>") << "pair " << w.pair;
    size_t pc = std::find(cm.begin(), cm.end(), 1) - cm.begin(), pj = std::find(jm.begin(), jm.end(), 1) - jm.begin();
    EXPECT_EQ(std::vector<int32_t>(c.begin(), c.begin() + pc), std::vector<int32_t>(j.begin(), j.begin() + pj))
        << "pair " << w.pair << ": the two sides share the prompt";
  }
  // A multi-turn HH dialogue: earlier assistant turns are prompt, only the last reply is trained on.
  auto c = r.read_doc(325, ShardPart::chosen);
  auto cm = r.read_doc_mask(325, ShardPart::chosen);
  std::string prompt = masked_text(tok, c, cm, 0);
  EXPECT_NE(prompt.find("<|im_start|>assistant"), std::string::npos);
  EXPECT_EQ(masked_text(tok, c, cm, 1).find("<|im_start|>"), std::string::npos);
}

TEST(Pack, ChatInputErrors) {
  BONSAI_REQUIRE_DIR("BONSAI_SHARED_DATA", data);
  std::string dir = bonsai::test::scratch_dir("pack_chat_errors");
  write_file(dir + "/m.jsonl",
             R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})" "\n"
             R"({"messages": [{"role": "user", "content": "only a question"}]})" "\n"
             R"({"messages": [{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}]})" "\n");
  auto cfg = config(data, dir + "/out", "sft", {source(dir + "/m.jsonl", "messages")});
  std::string e = error_of([&] { bonsai::pack_dataset(cfg); });
  EXPECT_NE(e.find("has no chat template"), std::string::npos) << e;
  EXPECT_NE(e.find("set chat_template: chatml"), std::string::npos) << e;
  cfg.chat_template = "chatlm";
  e = error_of([&] { bonsai::pack_dataset(cfg); });
  EXPECT_NE(e.find("did you mean 'chatml'?"), std::string::npos) << e;
  cfg.chat_template = "chatml";
  e = error_of([&] { bonsai::pack_dataset(cfg); });
  EXPECT_NE(e.find("m.jsonl:3 (record 3): message 2 has role 'robot'"), std::string::npos) << e;
  write_file(dir + "/m.jsonl", read_file(dir + "/m.jsonl").substr(0, read_file(dir + "/m.jsonl").rfind("{\"messages\"")));
  auto stats = bonsai::pack_dataset(cfg);
  EXPECT_EQ(stats.docs, 1u);
  EXPECT_EQ(stats.skipped["chat without an assistant reply"], 1u);
  write_file(dir + "/a.json", R"([{"instruction": "a", "output": "b"}, {"instruction": "c"}])");
  cfg.sources = {source(dir + "/a.json", "alpaca")};
  e = error_of([&] { bonsai::pack_dataset(cfg); });
  EXPECT_NE(e.find("a.json:1 (record 2): record has no field 'output' (its fields: instruction)"), std::string::npos) << e;
}

TEST(Pack, ParseSourcesFromYaml) {
  PackSource defaults;
  defaults.format = "jsonl";
  defaults.field = "content";
  YAML::Node n = YAML::Load(R"(
- data/a.jsonl
- {path: "data/b/*.json", format: alpaca, system_prompt: "Be brief."}
- path: c.txt
  format: text
  split: line
)");
  auto s = bonsai::parse_sources(n, defaults, "cfg.yaml");
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(s[0].path, "data/a.jsonl");
  EXPECT_EQ(s[0].format, "jsonl");
  EXPECT_EQ(s[0].field, "content");
  EXPECT_EQ(s[1].format, "alpaca");
  EXPECT_EQ(s[1].system_prompt, "Be brief.");
  EXPECT_EQ(s[2].split, "line");
  std::string e = error_of([] { bonsai::parse_sources(YAML::Load("[{path: a, format: text, splt: line}]"), {}, "cfg.yaml"); });
  EXPECT_NE(e.find("cfg.yaml: source 1: unknown key 'splt'"), std::string::npos) << e;
  EXPECT_NE(e.find("did you mean 'split'?"), std::string::npos) << e;
  e = error_of([] { bonsai::parse_sources(YAML::Load("[{path: a, format: sharegtp}]"), {}, "cfg.yaml"); });
  EXPECT_NE(e.find("did you mean 'sharegpt'?"), std::string::npos) << e;
  e = error_of([] { bonsai::parse_sources(YAML::Load("[a.jsonl]"), {}, "cfg.yaml"); });
  EXPECT_NE(e.find("source 1 ('a.jsonl') has no 'format'"), std::string::npos) << e;
}
