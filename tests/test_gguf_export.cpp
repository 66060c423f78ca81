// GGUF export checked by its real consumer: llama.cpp (llama-cpp-python) loads bonsai's F16 and Q8_0
// exports of SmolLM2 (CTest fixtures), and its logits and greedy continuations are compared with
// bonsai's forward on the source weights. Also: HF -> GGUF (F32) -> HF is bit-identical.
#include <gtest/gtest.h>

#include "core/error.h"
#include "data/tokenizer.h"
#include "model/checkpoint.h"
#include "model/gguf_export.h"
#include "model/registry.h"
#include "runtime/engine.h"
#include "test_util.h"

namespace bonsai {
namespace {

struct Agreement {
  double worst_rel = 0;
  int greedy_equal = 0;
};

Agreement compare_with_llamacpp(const std::string& ref_path, const char* label) {
  auto ref = load_safetensors(ref_path);
  Llama m = load_model("smollm2-135m-instruct", torch::kFloat);  // the source Q4_1 weights, dequantized
  Engine engine(make_torch_backend(m));
  torch::NoGradGuard ng;
  Agreement a;
  for (int i = 0; i < 5; ++i) {
    auto ids = ref.at("ids_" + std::to_string(i));
    auto want = ref.at("logits_" + std::to_string(i));
    auto got = m->forward(ids).logits;
    double rel = ((got.to(torch::kDouble) - want.to(torch::kDouble)).norm() / want.to(torch::kDouble).norm()).item<double>();
    a.worst_rel = std::max(a.worst_rel, rel);
    GenerationRequest r;
    r.prompt.assign(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + ids.numel());
    r.sampling.max_tokens = 16;
    r.sampling.ignore_eos = true;
    auto ours = engine.generate({r})[0].tokens;
    auto g = ref.at("greedy_" + std::to_string(i));
    std::vector<int32_t> theirs(g.data_ptr<int64_t>(), g.data_ptr<int64_t>() + g.numel());
    a.greedy_equal += ours == theirs;
    std::printf("[%s] prompt %d: logits relative error %.3e, greedy 16 tokens %s\n", label, i, rel,
                ours == theirs ? "identical" : "differ");
  }
  return a;
}

// F16 bound 1e-2 (the issue's): the export rounds every weight to f16 (2^-11 relative) and llama.cpp
// runs its own kernels (f16 activations in places); observed 1.0e-3 to 1.7e-3. A permutation or layout error
// gives errors of order 1.
TEST(GgufExport, LlamaCppF16MatchesBonsai) {
  BONSAI_REQUIRE_DIR("BONSAI_LLAMACPP_F16_REF", ref);
  auto a = compare_with_llamacpp(ref, "f16");
  EXPECT_LE(a.worst_rel, 1e-2);
  EXPECT_GE(a.greedy_equal, 4) << "greedy continuations identical on fewer than 4 of 5 prompts";
}

// Q8_0 is reported, with a loose bound that still catches layout errors (order 1).
TEST(GgufExport, LlamaCppQ8_0IsReported) {
  BONSAI_REQUIRE_DIR("BONSAI_LLAMACPP_Q8_REF", ref);
  auto a = compare_with_llamacpp(ref, "q8_0");
  std::printf("q8_0: worst logits relative error %.3e, greedy identical %d/5\n", a.worst_rel, a.greedy_equal);
  EXPECT_LE(a.worst_rel, 0.1);
}

// GGUF written from an HF directory (tokenizer.json -> tokenizer.* metadata): the tokenizer keys are
// the ones the original GGUF carries, and llama.cpp tokenizes the prompts into the same ids and
// predicts like bonsai.
TEST(GgufExport, FromHfSourceCarriesTheTokenizerLlamaCppAgrees) {
  BONSAI_REQUIRE_DIR("BONSAI_HF_GGUF_F16", gguf_path);
  BONSAI_REQUIRE_DIR("BONSAI_LLAMACPP_HF_F16_REF", ref_path);
  BONSAI_REQUIRE_DIR("BONSAI_LLAMACPP_F16_REF", orig_ref_path);
  Checkpoint orig = load_checkpoint(resolve_model("smollm2-135m-instruct"));
  Checkpoint ours = load_checkpoint(gguf_path);
  std::map<std::string, const gguf::Value*> want, got;
  for (const auto& [k, v] : orig.gguf_tokenizer_kv) want[k] = &v;
  for (const auto& [k, v] : ours.gguf_tokenizer_kv) got[k] = &v;
  // tokenizer.json cannot say "smollm": its pre-tokenizer (Digits + ByteLevel) is also StarCoder's, and
  // both names select the same split patterns (checked here; the ids below are llama.cpp's own).
  const std::string pre = got.count("tokenizer.ggml.pre") ? got["tokenizer.ggml.pre"]->as_string() : "";
  EXPECT_TRUE(pre == want["tokenizer.ggml.pre"]->as_string() || pre == "starcoder") << pre;
  EXPECT_EQ(Tokenizer::load(gguf_path).split_patterns(), Tokenizer::load("smollm2-135m-instruct").split_patterns());
  for (const char* key : {"tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                          "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                          "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
                          "tokenizer.ggml.add_bos_token", "tokenizer.chat_template"}) {
    ASSERT_TRUE(want.count(key)) << "the original GGUF has no " << key;
    ASSERT_TRUE(got.count(key)) << "the HF-sourced GGUF has no " << key;
    EXPECT_TRUE(*want[key] == *got[key]) << key << " differs from the original GGUF's";
  }
  auto ref = load_safetensors(ref_path), orig_ref = load_safetensors(orig_ref_path);
  for (int i = 0; i < 5; ++i)
    EXPECT_TRUE(torch::equal(ref.at("ids_" + std::to_string(i)), orig_ref.at("ids_" + std::to_string(i))))
        << "llama.cpp tokenizes prompt " << i << " differently with the written tokenizer metadata";
  auto a = compare_with_llamacpp(ref_path, "hf->f16");
  EXPECT_LE(a.worst_rel, 1e-2);
  EXPECT_GE(a.greedy_equal, 4);
}

TEST(GgufExport, HfToGgufF32ToHfIsBitIdentical) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  for (const char* name : {"gqa_untied", "llama3_long"}) {  // untied + GQA; tied + llama3 rope_freqs
    Checkpoint a = load_checkpoint(root + "/" + name);
    std::string dir = test::scratch_dir(std::string("gguf_rt_") + name);
    GgufExportOptions opt;
    opt.dtype = "f32";
    write_gguf(dir + "/m.gguf", a.config, a.tensors, opt);
    Checkpoint b = load_checkpoint(dir + "/m.gguf");
    EXPECT_EQ(b.config.rope_scaling.type, a.config.rope_scaling.type) << name;
    EXPECT_EQ(b.config.tie_word_embeddings, a.config.tie_word_embeddings) << name;
    ASSERT_EQ(a.tensors.size(), b.tensors.size()) << name;
    for (const auto& [t, v] : a.tensors) EXPECT_TRUE(torch::equal(v, b.tensors.at(t))) << name << " " << t;
    SaveOptions so;
    save_hf_checkpoint(dir + "/hf", b.config, b.tensors, so);
    Checkpoint c = load_checkpoint(dir + "/hf");
    for (const auto& [t, v] : a.tensors) EXPECT_TRUE(torch::equal(v, c.tensors.at(t))) << name << " " << t;
  }
}

TEST(GgufExport, Llama3RopeFactorsMatchTheScaledFrequencies) {
  LlamaConfig c;
  c.vocab_size = 8; c.hidden_size = 64; c.intermediate_size = 8; c.num_hidden_layers = 1;
  c.num_attention_heads = 1; c.num_key_value_heads = 1; c.head_dim = 64; c.rope_theta = 500000;
  c.rope_scaling = {"llama3", 32.0, 1.0, 4.0, 8192};
  auto base = 1.0 / torch::pow(500000.0, torch::arange(0, 64, 2).to(torch::kDouble) / 64);
  auto ratio = base / rope_inv_freq(c).to(torch::kDouble);
  auto f = llama3_rope_factors(c).to(torch::kDouble);
  EXPECT_LE(((ratio - f).abs() / f).max().item<double>(), 1e-6);  // fp32 rounding of inv_freq
  EXPECT_DOUBLE_EQ(f[0].item<double>(), 1.0);   // highest frequency untouched
  EXPECT_DOUBLE_EQ(f[31].item<double>(), 32.0);  // lowest divided by the factor
}

TEST(GgufExport, OllamaModelfileFollowsTheTemplateFamily) {
  auto chatml = ollama_modelfile("model.gguf", "{{'<|im_start|>' + message['role']}}");
  EXPECT_NE(chatml.find("FROM ./model.gguf"), std::string::npos);
  EXPECT_NE(chatml.find("PARAMETER stop \"<|im_end|>\""), std::string::npos);
  auto llama3 = ollama_modelfile("model.gguf", "<|start_header_id|>");
  EXPECT_NE(llama3.find("PARAMETER stop \"<|eot_id|>\""), std::string::npos);
  EXPECT_THROW(ollama_modelfile("model.gguf", "[INST]"), Error);
}

}  // namespace
}  // namespace bonsai
