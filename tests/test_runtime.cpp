// The runtime: KV-cache decoding equals full recomputation, batching does not change results,
// sampling is seeded and its filters do what they say, stopping rules hold.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/error.h"
#include "model/checkpoint.h"
#include "runtime/cpu/gemv.h"
#include "runtime/engine.h"
#include "test_util.h"

namespace bonsai {
namespace {

double rel_err(const torch::Tensor& a, const torch::Tensor& ref) {
  return ((a.to(torch::kDouble) - ref.to(torch::kDouble)).norm() / ref.to(torch::kDouble).norm()).item<double>();
}

std::vector<int32_t> random_prompt(int64_t n, int64_t vocab, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto t = torch::randint(0, vocab, {n}, gen, torch::kLong);
  return std::vector<int32_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + n);
}

// Cached decoding must reproduce the full forward's last-position logits at every step: same ops,
// different attention kernels (masked math vs flash) -> 1e-5 relative, as for the model itself.
TEST(Runtime, CachedStepsMatchFullForward) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  for (const char* name : {"gqa_untied", "llama3_long", "headdim_tied"}) {
    Llama m = load_model(root + "/" + name);
    auto be = make_torch_backend(m);
    be->reserve(1, 96);
    auto ids = random_prompt(80, m->config().vocab_size, 7);
    torch::NoGradGuard ng;
    auto all = torch::tensor(std::vector<int64_t>(ids.begin(), ids.end()), torch::kLong).unsqueeze(0);
    auto full = m->forward(all).logits[0];  // (T,V)
    be->step(all.narrow(1, 0, 50), {0}, {0});   // prefill 50
    be->step(all.narrow(1, 50, 10), {0}, {50});  // a second prefill chunk continues the cache
    for (int64_t t = 60; t < 80; ++t) {
      auto logits = be->step(all.narrow(1, t, 1), {0}, {t});
      EXPECT_LE(rel_err(logits[0], full[t]), 1e-5) << name << " position " << t;
    }
  }
}

// The CPU decode kernels (GEMV, fused attention, SwiGLU, one-pass RMSNorm) against the same backend
// on LibTorch ops alone, over a prefill and 24 decode steps of 3 sequences in non-contiguous slots.
// fp32: equal to 1e-5. bf16: the two round at different points, so each is compared with fp32
// arithmetic on the same (bf16-rounded) weights, and the kernels must be as close to it as LibTorch.
TEST(Runtime, CpuDecodeKernelsMatchLibTorchOps) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  if (!cpu::gemv_supported()) GTEST_SKIP() << "no AVX2/FMA/F16C on this CPU";
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    for (const char* name : {"gqa_untied", "headdim_tied"}) {
      Llama m = load_model(root + "/" + name), m32 = load_model(root + "/" + name);
      m->to(dtype);
      m32->to(dtype);
      m32->to(torch::kFloat);
      auto fused = make_torch_backend(m), plain = make_torch_backend(m, /*cpu_kernels=*/false);
      auto ref = make_torch_backend(m32, /*cpu_kernels=*/false);
      std::vector<Backend*> bes = {fused.get(), plain.get(), ref.get()};
      const std::vector<int64_t> slots = {3, 0, 2};
      std::vector<int64_t> pos;
      for (auto* be : bes) be->reserve(4, 64);
      torch::NoGradGuard ng;
      for (int64_t b = 0; b < 3; ++b) {
        auto ids = random_prompt(5 + 7 * b, m->config().vocab_size, 20 + b);
        auto t = torch::tensor(std::vector<int64_t>(ids.begin(), ids.end()), torch::kLong).unsqueeze(0);
        for (auto* be : bes) be->step(t, {slots[b]}, {0});
        pos.push_back(static_cast<int64_t>(ids.size()));
      }
      auto gen = at::make_generator<at::CPUGeneratorImpl>(4);
      double fused_plain = 0, fused_ref = 0, plain_ref = 0;
      for (int s = 0; s < 24; ++s) {
        auto tok = torch::randint(0, m->config().vocab_size, {3, 1}, gen, torch::kLong);
        auto a = fused->step(tok, slots, pos), b = plain->step(tok, slots, pos), r = ref->step(tok, slots, pos);
        for (int64_t i = 0; i < 3; ++i) {
          fused_plain = std::max(fused_plain, rel_err(a[i], b[i]));
          fused_ref = std::max(fused_ref, rel_err(a[i], r[i]));
          plain_ref = std::max(plain_ref, rel_err(b[i], r[i]));
        }
        for (auto& p : pos) ++p;
      }
      std::printf("%s %s: kernels vs LibTorch %.2e, kernels vs fp32 %.2e, LibTorch vs fp32 %.2e\n", name,
                  c10::toString(dtype), fused_plain, fused_ref, plain_ref);
      if (dtype == torch::kFloat) {
        EXPECT_LE(fused_plain, 1e-5) << name;
      } else {
        EXPECT_LE(fused_ref, 1.25 * plain_ref) << name;
        EXPECT_LE(fused_plain, 2.5e-2) << name;
      }
    }
  }
}

// The CPU decode attention kernel against a double-precision softmax(q k^T / sqrt(D)) v, for head
// widths with and without a tail beyond the 8-wide vectors, one and many positions, fp32 and bf16 rows.
TEST(CpuKernels, AttendRowMatchesReference) {
  if (!cpu::gemv_supported()) GTEST_SKIP() << "no AVX2/FMA/F16C on this CPU";
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    for (int64_t D : {8, 20, 24, 64, 128}) {
      for (int64_t L : {1, 7, 130}) {
        auto q = torch::randn({D}, gen) * (L == 130 ? 300.0 : 1.0);  // large scores: exp must not overflow
        auto k = torch::randn({L, D}, gen).to(dtype), v = torch::randn({L, D}, gen).to(dtype);
        const double scale = 1.0 / std::sqrt(static_cast<double>(D));
        auto p = torch::softmax(k.to(torch::kDouble).matmul(q.to(torch::kDouble)) * scale, 0);
        auto want = p.matmul(v.to(torch::kDouble));
        std::vector<float> scratch(L), out(D);
        cpu::attend_row(dtype == torch::kFloat ? cpu::WType::F32 : cpu::WType::BF16, q.data_ptr<float>(), k.data_ptr(),
                        v.data_ptr(), L, D, static_cast<float>(scale), scratch.data(), out.data());
        auto got = torch::from_blob(out.data(), {D}, torch::kFloat).to(torch::kDouble);
        EXPECT_LE((got - want).abs().max().item<double>(), 1e-5) << "D " << D << " L " << L << " " << dtype;
      }
    }
  }
}

TEST(Runtime, StepArgumentsAreChecked) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  auto be = make_torch_backend(load_model(root + "/gqa_untied"));
  be->reserve(2, 16);
  auto one = torch::tensor({{3L}}), two = torch::tensor({{3L}, {4L}});
  EXPECT_THAT([&] { be->step(one, {0}, {-1}); }, testing::ThrowsMessage<Error>(testing::HasSubstr("starts at position -1")));
  EXPECT_THAT([&] { be->step(two, {1, 1}, {0, 0}); }, testing::ThrowsMessage<Error>(testing::HasSubstr("share cache slot 1")));
  EXPECT_THAT([&] { be->step(one, {2}, {0}); }, testing::ThrowsMessage<Error>(testing::HasSubstr("outside the cache")));
  EXPECT_THAT([&] { be->step(one, {0}, {16}); }, testing::ThrowsMessage<Error>(testing::HasSubstr("the KV cache holds 16")));
}

TEST(Runtime, BatchedDecodeMatchesSingleSequences) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  Llama m = load_model(root + "/gqa_untied");
  auto single = make_torch_backend(m), batched = make_torch_backend(m);
  single->reserve(1, 64);
  batched->reserve(3, 64);
  std::vector<std::vector<int32_t>> prompts = {random_prompt(5, 97, 1), random_prompt(17, 97, 2), random_prompt(9, 97, 3)};
  auto to_t = [](const std::vector<int32_t>& v) {
    return torch::tensor(std::vector<int64_t>(v.begin(), v.end()), torch::kLong).unsqueeze(0);
  };
  std::vector<torch::Tensor> want;
  for (size_t i = 0; i < 3; ++i) {  // each alone: prefill then one decode step of token 3
    single->step(to_t(prompts[i]), {0}, {0});
    want.push_back(single->step(torch::tensor({{3L}}), {0}, {static_cast<int64_t>(prompts[i].size())})[0]);
    batched->step(to_t(prompts[i]), {static_cast<int64_t>(i)}, {0});
  }
  std::vector<int64_t> start = {5, 17, 9};
  auto got = batched->step(torch::tensor({{3L}, {3L}, {3L}}), {0, 1, 2}, start);
  for (int i = 0; i < 3; ++i) EXPECT_LE(rel_err(got[i], want[i]), 1e-5) << "sequence " << i;
  // Non-contiguous slots (a gather instead of a view) give the same answer.
  auto got2 = batched->step(torch::tensor({{4L}, {4L}}), {0, 2}, {6, 10});
  EXPECT_EQ(got2.sizes(), (std::vector<int64_t>{2, 97}));
}

TEST(Runtime, GreedyEngineEqualsReferenceGreedy) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  Llama m = load_model(root + "/headdim_tied");
  Engine engine(make_torch_backend(m));
  GenerationRequest r{random_prompt(6, 131, 11), {}};
  r.sampling.max_tokens = 12;
  r.sampling.ignore_eos = true;
  auto out = engine.generate({r});
  std::vector<int64_t> prompt(r.prompt.begin(), r.prompt.end());
  auto ref = greedy_generate_reference(m, prompt, 12);
  EXPECT_EQ(std::vector<int64_t>(out[0].tokens.begin(), out[0].tokens.end()), ref);
  EXPECT_EQ(out[0].finish_reason, "length");
}

TEST(Runtime, SeededSamplingIsDeterministicAndPerSequence) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  Llama m = load_model(root + "/gqa_untied");
  Engine engine(make_torch_backend(m));
  GenerationRequest a{random_prompt(4, 97, 5), {}};
  a.sampling.temperature = 1.0;
  a.sampling.seed = 42;
  a.sampling.max_tokens = 24;
  a.sampling.ignore_eos = true;
  GenerationRequest b = a;
  b.sampling.seed = 43;
  auto alone = engine.generate({a});
  auto together = engine.generate({b, a, a});  // batching must not change a seeded request's output
  EXPECT_EQ(alone[0].tokens, together[1].tokens);
  EXPECT_EQ(together[1].tokens, together[2].tokens);
  EXPECT_NE(together[0].tokens, together[1].tokens);
}

TEST(Runtime, StopIdsMaxTokensAndCancellation) {
  BONSAI_REQUIRE_DIR("BONSAI_GOLDEN_DIR", root);
  Llama m = load_model(root + "/gqa_untied");
  Engine engine(make_torch_backend(m));
  GenerationRequest r{random_prompt(4, 97, 9), {}};
  r.sampling.max_tokens = 20;
  r.sampling.ignore_eos = true;
  auto free_run = engine.generate({r})[0].tokens;
  ASSERT_EQ(free_run.size(), 20u);
  r.sampling.stop_ids = {free_run[4]};
  auto stopped = engine.generate({r})[0];
  auto first = std::find(free_run.begin(), free_run.end(), free_run[4]) - free_run.begin();
  EXPECT_EQ(stopped.tokens.size(), static_cast<size_t>(first + 1));
  EXPECT_EQ(stopped.finish_reason, "stop");
  r.sampling.stop_ids.clear();
  int seen = 0;
  auto cancelled = engine.generate({r}, [&](size_t, int32_t) { return ++seen < 3; })[0];
  EXPECT_EQ(cancelled.tokens.size(), 3u);
  EXPECT_EQ(cancelled.finish_reason, "cancelled");
}

TEST(Sampler, FiltersBehave) {
  auto logits = torch::tensor({1.0f, 3.0f, 2.0f, 0.5f, 2.9f});
  SamplingParams p;
  EXPECT_EQ(Sampler(p).sample(logits, {}), 1);  // greedy
  p.temperature = 1.0;
  p.top_k = 1;
  for (uint64_t s = 0; s < 20; ++s) {
    p.seed = s;
    EXPECT_EQ(Sampler(p).sample(logits, {}), 1);
  }
  p.top_k = 2;  // only ids 1 and 4 survive
  for (uint64_t s = 0; s < 50; ++s) {
    p.seed = s;
    int32_t t = Sampler(p).sample(logits, {});
    EXPECT_TRUE(t == 1 || t == 4) << t;
  }
  p.top_k = 0;
  p.top_p = 0.01;  // the top token alone already has the mass
  EXPECT_EQ(Sampler(p).sample(logits, {}), 1);
  p.top_p = 1.0;
  p.min_p = 0.5;  // keeps ids with p >= 0.5 * p_max: ids 1 and 4 (e^-0.1 = 0.90) but not 2 (e^-1 = 0.37)
  for (uint64_t s = 0; s < 50; ++s) {
    p.seed = s;
    int32_t t = Sampler(p).sample(logits, {});
    EXPECT_TRUE(t == 1 || t == 4) << t;
  }
  SamplingParams rp;
  rp.repetition_penalty = 2.0;  // id 1: 3.0 -> 1.5, below id 4's 2.9
  EXPECT_EQ(Sampler(rp).sample(logits, {1}), 4);
  SamplingParams bad;
  bad.top_p = 0;
  EXPECT_THROW(Sampler{bad}, Error);
}

}  // namespace
}  // namespace bonsai
