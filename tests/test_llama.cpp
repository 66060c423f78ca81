// The Llama forward against Hugging Face transformers on tiny random-weight models
// (scripts/ref/golden_llama.py writes them; CTest runs it first as a fixture), plus checkpoint
// save/load round trips and the trace hook.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "core/error.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "test_util.h"

namespace bonsai {
namespace {

namespace fs = std::filesystem;

double rel_err(const torch::Tensor& a, const torch::Tensor& ref) {
  auto d = (a.to(torch::kDouble) - ref.to(torch::kDouble)).norm();
  return (d / ref.to(torch::kDouble).norm()).item<double>();
}

const char* kCases[] = {"gqa_untied", "headdim_tied", "llama3_long", "single_token"};

class Golden : public ::testing::TestWithParam<const char*> {};

// fp32 bound 1e-5: bonsai (SDPA, fused kernels) and transformers (eager attention) differ only in
// summation order; the observed errors are ~1e-7 (printed below), and a real formula error (a wrong
// RoPE pairing, norm placement or GQA grouping) gives >1e-2. 1e-5 catches those with 100x margin.
TEST_P(Golden, Fp32LogitsMatchTransformers) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  const std::string dir = root + "/" + GetParam();
  auto gold = load_safetensors(dir + "/golden.safetensors");
  Llama m = load_model(dir);
  torch::NoGradGuard ng;
  torch::Tensor logits = m->forward(gold.at("input_ids")).logits;
  double err = rel_err(logits, gold.at("logits_f32"));
  std::printf("[%s] fp32 relative error %.3e\n", GetParam(), err);
  EXPECT_LE(err, 1e-5);
}

// bf16 bound 2e-2: bf16 keeps 8 mantissa bits (relative rounding 2^-9 = 2e-3 per op); after a few
// layers of matmuls, norms and softmax rounded at different points (transformers' eager attention
// rounds the scores to bf16, SDPA accumulates in fp32) the two drift by 0.8e-2 to 1.2e-2 here
// (printed below; each is also ~1e-2 from the fp32 logits). 2e-2 is the bound; a structural
// error (wrong RoPE pairing, GQA grouping, norm) is >1e-1.
TEST_P(Golden, Bf16LogitsMatchTransformers) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  const std::string dir = root + "/" + GetParam();
  auto gold = load_safetensors(dir + "/golden.safetensors");
  Llama m = load_model(dir, torch::kBFloat16);
  torch::NoGradGuard ng;
  torch::Tensor logits = m->forward(gold.at("input_ids")).logits;
  ASSERT_EQ(logits.scalar_type(), torch::kBFloat16);
  double err = rel_err(logits, gold.at("logits_bf16"));
  double err32 = rel_err(logits, gold.at("logits_f32"));
  std::printf("[%s] bf16 relative error %.3e vs transformers bf16, %.3e vs fp32\n", GetParam(), err, err32);
  EXPECT_LE(err, 2e-2);
}

INSTANTIATE_TEST_SUITE_P(Llama, Golden, ::testing::ValuesIn(kCases));

TEST(Llama, TraceHookNamesEveryActivationAndHiddenStatesFollowHF) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  Llama m = load_model(root + "/headdim_tied");
  std::map<std::string, int> seen;
  TraceFn fn = [&](int64_t layer, const char* name, const torch::Tensor& t) {
    seen[std::to_string(layer) + ":" + name]++;
    if (std::string(name) == "attn_out") EXPECT_EQ(t.size(-1), 4 * 24);  // H*D before o_proj
    if (std::string(name) == "k") EXPECT_EQ(t.size(1), 1);               // Hkv heads
  };
  ForwardOptions opt;
  opt.trace = &fn;
  opt.return_hidden = true;
  torch::NoGradGuard ng;
  auto out = m->forward(torch::zeros({1, 5}, torch::kLong), opt);
  EXPECT_EQ(out.hidden_states.size(), 4u);  // embeddings + 3 layers (last one normed)
  EXPECT_TRUE(torch::equal(out.hidden_states.back(), out.last_hidden));
  for (int l = 0; l < 3; ++l)
    for (const char* n : {"attn_norm", "q", "k", "v", "attn_out", "attn_proj", "ffn_norm", "ffn_act", "ffn_out", "layer_out"})
      EXPECT_EQ(seen[std::to_string(l) + ":" + n], 1) << "layer " << l << " " << n;
  EXPECT_EQ(seen["-1:embed"], 1);
  EXPECT_EQ(seen["-1:logits"], 1);
}

TEST(Llama, CausalPrefixLogitsDoNotDependOnLaterTokens) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  Llama m = load_model(root + "/gqa_untied");
  torch::NoGradGuard ng;
  auto ids = torch::randint(0, 97, {1, 12}, torch::kLong);
  auto full = m->forward(ids).logits;
  auto prefix = m->forward(ids.narrow(1, 0, 5)).logits;
  EXPECT_LE(rel_err(full.narrow(1, 0, 5), prefix), 1e-6);
}

TEST(Checkpoint, SaveShardedThenLoadIsBitIdentical) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  Checkpoint a = load_checkpoint(root + "/gqa_untied");
  std::string out = test::scratch_dir("save") + "/model";
  SaveOptions opt;
  opt.max_shard_bytes = 64 * 1024;  // forces several shards and an index
  opt.carry_tokenizer_from = a.hf_dir;
  save_hf_checkpoint(out, a.config, a.tensors, opt);
  EXPECT_TRUE(fs::exists(out + "/model.safetensors.index.json"));
  EXPECT_TRUE(fs::exists(out + "/generation_config.json"));
  EXPECT_FALSE(fs::exists(out + ".partial"));
  Checkpoint b = load_checkpoint(out);
  EXPECT_TRUE(a.config == b.config);
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (const auto& [name, t] : a.tensors) EXPECT_TRUE(torch::equal(t, b.tensors.at(name))) << name;
}

TEST(Checkpoint, Bf16SaveKeepsDtypeAndLoadsWithoutCopy) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  Checkpoint a = load_checkpoint(root + "/headdim_tied");
  std::string out = test::scratch_dir("bf16") + "/model";
  SaveOptions opt;
  opt.dtype = torch::kBFloat16;
  save_hf_checkpoint(out, a.config, a.tensors, opt);
  EXPECT_FALSE(fs::exists(out + "/model.safetensors.index.json"));  // one shard: no index
  Checkpoint b = load_checkpoint(out);
  EXPECT_EQ(b.config.torch_dtype, "bfloat16");
  EXPECT_EQ(b.tensors.count("lm_head.weight"), 0u);  // tied: written like Llama 3.2 (no lm_head)
  for (const auto& [name, t] : b.tensors) {
    EXPECT_EQ(t.scalar_type(), torch::kBFloat16) << name;
    EXPECT_TRUE(torch::equal(t, a.tensors.at(name).to(torch::kBFloat16))) << name;
  }
}

TEST(Checkpoint, SavingOverAnExistingDirectoryReplacesItWhole) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  Checkpoint a = load_checkpoint(root + "/single_token");
  std::string out = test::scratch_dir("replace") + "/model";
  SaveOptions sharded;
  sharded.max_shard_bytes = 8 * 1024;
  save_hf_checkpoint(out, a.config, a.tensors, sharded);
  save_hf_checkpoint(out, a.config, a.tensors, SaveOptions{});
  EXPECT_TRUE(fs::exists(out + "/model.safetensors"));
  EXPECT_FALSE(fs::exists(out + "/model.safetensors.index.json"));  // the old shards are gone
  EXPECT_FALSE(fs::exists(out + ".old"));
  Checkpoint b = load_checkpoint(out);
  for (const auto& [name, t] : a.tensors) EXPECT_TRUE(torch::equal(t, b.tensors.at(name))) << name;
}

}  // namespace
}  // namespace bonsai

namespace bonsai {
namespace {

// Activation checkpointing recomputes each layer in backward: gradients must equal the plain ones
// (same ops in the same order: bit-identical on CPU; 1e-6 allows a different kernel choice).
TEST(Llama, ActivationCheckpointingGivesTheSameGradients) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  auto grads_of = [&](bool ckpt) {
    Llama m = load_model(root + "/gqa_untied", torch::kFloat);
    for (auto& p : m->parameters()) p.set_requires_grad(true);
    auto ids = torch::arange(0, 38, torch::kLong).remainder(97).view({2, 19});
    ForwardOptions opt;
    opt.checkpoint_layers = ckpt;
    auto out = m->forward(ids, opt);
    out.logits.pow(2).mean().backward();
    std::map<std::string, torch::Tensor> g;
    for (auto& p : m->named_parameters()) g[p.key()] = p.value().grad().clone();
    return g;
  };
  auto plain = grads_of(false), ckpt = grads_of(true);
  for (const auto& [name, g] : plain) {
    double rel = ((ckpt.at(name) - g).norm() / g.norm().clamp_min(1e-30)).item<double>();
    EXPECT_LE(rel, 1e-6) << name;
  }
}


// The custom backward of RMSNorm and SwiGLU (model/llama.cpp keeps less for backward than the composed
// ops): central finite differences in fp64, every entry, odd shapes. fp64 central differences are
// accurate to ~1e-9 here; a wrong term in the formulas gives >1e-2.
TEST(Llama, RmsNormAndSwiGluGradientsMatchFiniteDifferences) {
  auto g = at::make_generator<at::CPUGeneratorImpl>(17);
  torch::Tensor x = at::normal(0, 1, {3, 5, 7}, g).to(torch::kDouble).requires_grad_();
  torch::Tensor w = at::normal(1, 0.3, {7}, g).to(torch::kDouble).requires_grad_();
  torch::Tensor u = at::normal(0, 1, {3, 5, 7}, g).to(torch::kDouble).requires_grad_();
  torch::Tensor r = at::normal(0, 1, {3, 5, 7}, g).to(torch::kDouble);  // a fixed projection: loss = <f, r>
  const double eps_norm = 1e-5;
  auto loss = [&](const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& c) {
    return (swiglu(rms_norm(a, b, eps_norm), c) * r).sum();
  };
  auto grads = torch::autograd::grad({loss(x, w, u)}, {x, w, u});
  std::vector<torch::Tensor> inputs = {x, w, u};
  for (size_t k = 0; k < inputs.size(); ++k) {
    torch::Tensor fd = torch::zeros_like(grads[k]);
    for (int64_t i = 0; i < inputs[k].numel(); ++i) {
      std::vector<torch::Tensor> p, m;
      for (const auto& t : inputs) p.push_back(t.detach().clone()), m.push_back(t.detach().clone());
      const double h = 1e-6;
      p[k].view(-1)[i] += h;
      m[k].view(-1)[i] -= h;
      fd.view(-1)[i] = (loss(p[0], p[1], p[2]) - loss(m[0], m[1], m[2])).item<double>() / (2 * h);
    }
    EXPECT_LE(rel_err(grads[k], fd), 1e-7) << "input " << k;
  }
}

// Against the composed ATen ops (what autograd would do without the custom functions): same forward
// bits, gradients within fp32 rounding, and within bf16 rounding for bf16 activations with fp32
// weights (the autocast case).
TEST(Llama, RmsNormAndSwiGluMatchTheComposedOps) {
  auto composed = [](const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& u, double eps) {
    torch::Tensor h = x.to(torch::kFloat);
    h = h * torch::rsqrt(h.pow(2).mean(-1, true) + eps);
    torch::Tensor y = w * h.to(x.scalar_type());
    return torch::silu(y.to(u.scalar_type())) * u;
  };
  for (auto dt : {torch::kFloat, torch::kBFloat16}) {
    auto g = at::make_generator<at::CPUGeneratorImpl>(23);
    torch::Tensor x0 = at::normal(0, 2, {2, 9, 33}, g).to(dt), w0 = at::normal(1, 0.2, {33}, g);
    torch::Tensor u0 = at::normal(0, 1, {2, 9, 33}, g).to(dt), r = at::normal(0, 1, {2, 9, 33}, g);
    auto run = [&](bool custom) {
      torch::Tensor x = x0.clone().requires_grad_(), w = w0.clone().requires_grad_(), u = u0.clone().requires_grad_();
      torch::Tensor y = custom ? swiglu(rms_norm(x, w, 1e-5).to(dt), u) : composed(x, w, u, 1e-5);
      auto gr = torch::autograd::grad({(y.to(torch::kFloat) * r).sum()}, {x, w, u});
      return std::make_pair(y.detach(), gr);
    };
    auto [y_c, g_c] = run(true);
    auto [y_r, g_r] = run(false);
    EXPECT_TRUE(torch::equal(y_c, y_r)) << c10::toString(dt);
    const double tol = dt == torch::kFloat ? 1e-6 : 1e-2;
    for (size_t k = 0; k < 3; ++k) EXPECT_LE(rel_err(g_c[k], g_r[k]), tol) << c10::toString(dt) << " input " << k;
  }
}

}  // namespace
}  // namespace bonsai
