// Bad input at the model level: each must be a clear bonsai::Error naming the file, key or tensor,
// with what was expected and what was found.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "model/checkpoint.h"
#include "model/registry.h"
#include "test_util.h"

namespace bonsai {
namespace {

using bonsai::test::error_of;

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using json = nlohmann::json;

json tiny_config() {
  return {{"model_type", "llama"}, {"vocab_size", 32}, {"hidden_size", 16}, {"intermediate_size", 32},
          {"num_hidden_layers", 1}, {"num_attention_heads", 2}, {"num_key_value_heads", 1},
          {"rms_norm_eps", 1e-5}, {"tie_word_embeddings", true}};
}

TEST(ModelErrors, MissingConfigKeyIsNamed) {
  json j = tiny_config();
  j.erase("hidden_size");
  EXPECT_THAT(error_of([&] { LlamaConfig::from_json(j, "x/config.json"); }),
              HasSubstr("x/config.json: missing key 'hidden_size'"));
}

TEST(ModelErrors, UnsupportedFeaturesAreNamed) {
  json j = tiny_config();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  EXPECT_THAT(error_of([&] { LlamaConfig::from_json(j, "c"); }), HasSubstr("rope_scaling.rope_type 'yarn' is not supported"));
  j = tiny_config();
  j["attention_bias"] = true;
  EXPECT_THAT(error_of([&] { LlamaConfig::from_json(j, "c"); }), HasSubstr("'attention_bias' is true"));
  j = tiny_config();
  j["model_type"] = "mistral";
  EXPECT_THAT(error_of([&] { LlamaConfig::from_json(j, "c"); }), HasSubstr("expected \"llama\""));
  j = tiny_config();
  j["num_key_value_heads"] = 3;
  EXPECT_THAT(error_of([&] { LlamaConfig::from_json(j, "c"); }), HasSubstr("not a multiple of num_key_value_heads (3)"));
  j = tiny_config();
  j["vocab_size"] = "32";
  EXPECT_THAT(error_of([&] { LlamaConfig::from_json(j, "c"); }), HasSubstr("'vocab_size' must be an integer"));
}

TEST(ModelErrors, ReadsTransformers5RopeParameters) {
  json j = tiny_config();
  j["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 500000.0}, {"factor", 32.0},
                          {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                          {"original_max_position_embeddings", 8192}};
  auto c = LlamaConfig::from_json(j, "c");
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 32.0);
  // and writes the classic keys, which every transformers version reads
  auto out = c.to_json();
  EXPECT_EQ(out["rope_scaling"]["rope_type"], "llama3");
  EXPECT_EQ(out["head_dim"], 8);
}

TEST(ModelErrors, WrongTensorShapeShowsExpectedAndFound) {
  auto cfg = LlamaConfig::from_json(tiny_config(), "c");
  std::string dir = test::scratch_dir("wrongshape");
  Llama m(cfg);
  m->init_random(0);
  std::map<std::string, torch::Tensor> t;
  for (auto& p : m->named_parameters()) t[p.key()] = p.value().detach();
  SaveOptions opt;
  save_hf_checkpoint(dir + "/ok", cfg, t, opt);
  // Same weights, but the config claims a wider MLP.
  json j = tiny_config();
  j["intermediate_size"] = 48;
  std::ofstream(dir + "/ok/config.json") << j.dump();
  EXPECT_THAT(error_of([&] { load_checkpoint(dir + "/ok"); }),
              HasSubstr("tensor 'model.layers.0.mlp.gate_proj.weight' has wrong shape; expected [48, 16], got [32, 16]"));
  // Saving tensors that do not match the config is refused before anything is written.
  t.erase("model.norm.weight");
  EXPECT_THAT(error_of([&] { save_hf_checkpoint(dir + "/bad", cfg, t, opt); }),
              HasSubstr("tensor 'model.norm.weight' (output norm) is missing"));
  EXPECT_FALSE(fs::exists(dir + "/bad"));
}

TEST(ModelErrors, UnknownModelNameSuggestsTheNearest) {
  EXPECT_THAT(error_of([] { resolve_model("smollm2-135m-instuct"); }), HasSubstr("did you mean 'smollm2-135m-instruct'"));
  EXPECT_THAT(error_of([] { load_checkpoint("/nonexistent/model"); }), HasSubstr("'/nonexistent/model'"));
}

TEST(ModelErrors, DirectoryWithoutConfig) {
  std::string dir = test::scratch_dir("noconfig");
  EXPECT_THAT(error_of([&] { load_checkpoint(dir); }), HasSubstr("no config.json"));
}

// llama.cpp's convert script permutes Q/K rows: reshape(n_head, 2, D/2, C).swapaxes(1, 2). Loading
// a GGUF must undo exactly that; check against the forward formula written out independently.
TEST(Gguf, TinyRandomLlamaLoadsAndRuns) {
  BONSAI_REQUIRE_DIR("BONSAI_SHARED_DATA", data);
  Checkpoint ck = load_checkpoint(data + "/models/llama-2-tiny-random.gguf");
  EXPECT_EQ(ck.config.hidden_size, 8);
  EXPECT_EQ(ck.config.num_attention_heads, 2);
  EXPECT_EQ(ck.config.intermediate_size, 32);
  EXPECT_EQ(ck.config.vocab_size, 32000);
  Llama m(ck.config);
  m->load_state(ck.tensors, ck.source);
  torch::NoGradGuard ng;
  auto logits = m->forward(torch::tensor({{1, 15043, 3186}}, torch::kLong)).logits;
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{1, 3, 32000}));
  EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
}

}  // namespace
}  // namespace bonsai
