// The fused, chunked distillation loss against the plain full-logits fp32 loss (value and
// gradients), KL(p||p) = 0, and central finite differences in fp64 for the custom backward.
#include <gtest/gtest.h>

#include "distill/kd_loss.h"

namespace bonsai {
namespace {

using torch::Tensor;

double rel(const Tensor& a, const Tensor& b) {
  return ((a.to(torch::kDouble) - b.to(torch::kDouble)).norm() / b.to(torch::kDouble).norm().clamp_min(1e-30)).item<double>();
}

struct Problem {
  Tensor h, w, labels;
  std::vector<OnlineTeacher> online;
  std::vector<TopKTeacher> offline;
};

// Odd sizes on purpose: N=19 tokens, C=13, V=111 (teacher V=115: padded vocabulary), chunk 7.
Problem make_problem(uint64_t seed, bool use_online, bool use_offline, torch::ScalarType dt = torch::kFloat) {
  auto g = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto o = torch::TensorOptions().dtype(dt);
  Problem p;
  p.h = at::normal(0, 1, {19, 13}, g).to(dt).requires_grad_();
  p.w = at::normal(0, 0.5, {111, 13}, g).to(dt).requires_grad_();
  p.labels = torch::randint(0, 111, {19}, g, torch::kLong);
  p.labels.index_put_({torch::tensor({2, 11})}, -100);  // two ignored positions
  if (use_online) {
    p.online.push_back({at::normal(0, 1, {19, 17}, g).to(dt), at::normal(0, 0.5, {115, 17}, g).to(dt), 0.7});
  }
  if (use_offline) {
    Tensor teacher_logits = at::normal(0, 2, {19, 111}, g).to(dt);
    auto t = topk_from_logits(teacher_logits, 9, 1.0);
    t.weight_in_mix = use_online ? 0.3 : 1.0;
    p.offline.push_back(t);
  }
  return p;
}

// Every fused/chunked loss equals the plain fp32 loss within 1e-5 relative (value and gradient):
// both compute in fp32, only the summation order and chunking differ (observed ~1e-7).
TEST(KdLoss, FusedEqualsPlainForEveryKindAndSource) {
  for (const char* kind : {"fkl", "rkl", "jsd", "skew_fkl", "skew_rkl"}) {
    for (int source = 0; source < 3; ++source) {  // online, offline top-k, both
      for (double kd_weight : {1.0, 0.6}) {
        Problem p = make_problem(17 + source, source != 1, source != 0);
        KdLossOptions o;
        o.kind = kind;
        o.temperature = 1.7;
        o.kd_weight = kd_weight;
        o.chunk_tokens = 7;
        o.beta = 0.3;
        o.skew = 0.2;
        auto fused = fused_kd_loss(p.h, p.w, p.labels, p.online, p.offline, o);
        auto [gh, gw] = std::make_pair(torch::autograd::grad({fused.loss}, {p.h, p.w}), 0);
        Tensor ref = reference_kd_loss(p.h, p.w, p.labels, p.online, p.offline, o);
        auto rg = torch::autograd::grad({ref}, {p.h, p.w});
        std::string what = std::string(kind) + " source " + std::to_string(source) + " kd_weight " + std::to_string(kd_weight);
        EXPECT_LE(std::abs(fused.loss.item<double>() - ref.item<double>()) / std::abs(ref.item<double>()), 1e-5) << what;
        EXPECT_LE(rel(gh[0], rg[0]), 1e-5) << what << " (hidden grad)";
        EXPECT_LE(rel(gh[1], rg[1]), 1e-5) << what << " (weight grad)";
        EXPECT_EQ(fused.tokens, 17);
      }
    }
  }
}

TEST(KdLoss, DivergenceOfADistributionFromItselfIsZero) {
  auto g = at::make_generator<at::CPUGeneratorImpl>(3);
  Tensor h = at::normal(0, 1, {10, 8}, g).requires_grad_();
  Tensor w = at::normal(0, 1, {50, 8}, g).requires_grad_();
  Tensor labels = torch::zeros({10}, torch::kLong);
  for (const char* kind : {"fkl", "rkl", "jsd", "skew_fkl", "skew_rkl"}) {
    KdLossOptions o;
    o.kind = kind;
    std::vector<OnlineTeacher> self = {{h.detach(), w.detach(), 1.0}};
    auto out = fused_kd_loss(h, w, labels, self, {}, o);
    auto grads = torch::autograd::grad({out.loss}, {h, w});
    EXPECT_LE(std::abs(out.loss.item<double>()), 1e-6) << kind;
    EXPECT_LE(grads[0].abs().max().item<double>(), 1e-6) << kind;
  }
}

// Central differences in fp64 on a tiny problem: checks the hand-written backward itself.
TEST(KdLoss, GradientMatchesFiniteDifferences) {
  for (const char* kind : {"fkl", "rkl", "jsd", "skew_fkl", "skew_rkl"}) {
    Problem p = make_problem(5, true, true, torch::kDouble);
    KdLossOptions o;
    o.kind = kind;
    o.kd_weight = 0.8;
    o.chunk_tokens = 4;
    o.temperature = 1.3;
    auto loss_of = [&](const Tensor& h) {
      return fused_kd_loss(h, p.w.detach(), p.labels, p.online, p.offline, o).loss.item<double>();
    };
    auto out = fused_kd_loss(p.h, p.w, p.labels, p.online, p.offline, o);
    Tensor gh = torch::autograd::grad({out.loss}, {p.h})[0];
    Tensor fd = torch::zeros_like(gh);
    Tensor base = p.h.detach().clone();
    const double eps = 1e-6;
    for (int64_t i = 0; i < base.numel(); i += 7) {  // every 7th entry keeps the test fast
      Tensor hp = base.clone(), hm = base.clone();
      hp.view(-1)[i] += eps;
      hm.view(-1)[i] -= eps;
      fd.view(-1)[i] = (loss_of(hp) - loss_of(hm)) / (2 * eps);
    }
    Tensor mask = torch::zeros_like(gh).view(-1);
    mask.index_put_({torch::arange(0, base.numel(), 7)}, 1.0);
    mask = mask.view_as(gh);
    // fp64 central differences are accurate to ~eps^2 * f''' + rounding/eps ~ 1e-9; 1e-6 leaves margin.
    EXPECT_LE(rel(gh * mask, fd), 1e-6) << kind;
  }
}

TEST(KdLoss, TopKApproachesTheFullLossAsKGrows) {
  auto g = at::make_generator<at::CPUGeneratorImpl>(9);
  Tensor h = at::normal(0, 1, {16, 8}, g), w = at::normal(0, 1, {200, 8}, g);
  Tensor th = at::normal(0, 1, {16, 8}, g), tw = at::normal(0, 1, {200, 8}, g);
  Tensor labels = torch::zeros({16}, torch::kLong);
  KdLossOptions o;
  double full = fused_kd_loss(h, w, labels, {{th, tw, 1.0}}, {}, o).loss.item<double>();
  Tensor tlogits = torch::matmul(th, tw.t());
  double prev = 1e9;
  for (int64_t k : {4, 32, 190}) {
    double approx = fused_kd_loss(h, w, labels, {}, {topk_from_logits(tlogits, k, 1.0)}, o).loss.item<double>();
    double err = std::abs(approx - full) / full;
    EXPECT_LT(err, prev) << "k=" << k;
    prev = err;
  }
  EXPECT_LT(prev, 1e-2);
}

TEST(KdLoss, BadOptionsAreRejected) {
  KdLossOptions o;
  o.kind = "kl";
  EXPECT_THROW(o.validate(), std::exception);
  o.kind = "jsd";
  o.beta = 1.0;
  EXPECT_THROW(o.validate(), std::exception);
}

}  // namespace
}  // namespace bonsai
