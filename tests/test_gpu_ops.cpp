// GPU tests (CTest label "gpu"): every CUDA kernel against an fp32 ATen reference on fresh random
// inputs, odd sizes and non-contiguous inputs; the fused distillation loss against the plain one;
// the CUDA runtime backend against the LibTorch one. Skipped (reported as skipped) without a GPU.
//
// Relative error bounds (||out - ref|| / ||ref||), per op and dtype: fp32 1e-5 (elementwise, losses
// and gradients), fp16 2e-3, bf16 1e-2 (one or two roundings of the output to 8 bits of mantissa).
#include <gtest/gtest.h>

#include <limits>
#include <random>
#include <sstream>

#include "distill/kd_loss.h"
#include "model/checkpoint.h"
#include "model/gguf_export.h"
#include "model/llama.h"
#include "runtime/cuda_backend.h"
#include "runtime/cuda_ops.h"
#include "runtime/engine.h"
#include "test_util.h"
#include "train/train_state.h"

namespace bonsai {
namespace {

using torch::Tensor;

#define REQUIRE_GPU() \
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device (or a build without CUDA): GPU test skipped"

const torch::Device kDev(torch::kCUDA, 0);

double rel(const Tensor& a, const Tensor& ref) {
  auto d = (a.to(torch::kCPU, torch::kDouble) - ref.to(torch::kCPU, torch::kDouble));
  const double n = ref.to(torch::kCPU, torch::kDouble).norm().item<double>();
  const double e = d.norm().item<double>() / std::max(n, 1e-30);
  return std::isfinite(e) ? e : 1e30;  // NaN never passes
}

double bound(torch::ScalarType t) { return t == torch::kFloat ? 1e-5 : t == torch::kHalf ? 2e-3 : 1e-2; }
const char* dname(torch::ScalarType t) { return t == torch::kFloat ? "f32" : t == torch::kHalf ? "f16" : "bf16"; }
const std::vector<torch::ScalarType> kTypes = {torch::kFloat, torch::kHalf, torch::kBFloat16};

Tensor randn(std::vector<int64_t> shape, torch::ScalarType t, double scale = 1.0) {
  return (torch::randn(shape, torch::TensorOptions().device(kDev)) * scale).to(t);
}

Tensor rms_ref(const Tensor& x, const Tensor& w, double eps) {
  auto xf = x.to(torch::kFloat);
  return xf * torch::rsqrt(xf.pow(2).mean(-1, true) + eps) * w.to(torch::kFloat);
}

TEST(GpuOps, AddRmsNorm) {
  REQUIRE_GPU();
  torch::manual_seed(1);
  for (auto t : kTypes)
    for (int64_t rows : {1, 19, 111, 989})
      for (int64_t C : {576, 2048, 3072, 4096, 100}) {
        Tensor x = randn({rows, C}, t), w = randn({C}, t, 0.5) + 1;
        // residual as a non-contiguous view (every other row of a taller tensor)
        Tensor rbig = randn({rows * 2, C}, t);
        Tensor r = rbig.slice(0, 0, rows * 2, 2);
        Tensor xsum_ref = x.to(torch::kFloat) + r.to(torch::kFloat);
        Tensor out = cuda::add_rmsnorm(x, r, w, 1e-5);
        EXPECT_LE(rel(x, xsum_ref), bound(t)) << dname(t) << " x+=r rows " << rows << " C " << C;
        EXPECT_LE(rel(out, rms_ref(xsum_ref, w, 1e-5)), 2 * bound(t)) << dname(t) << " rows " << rows << " C " << C;
        Tensor x2 = randn({rows, C}, t);
        Tensor out2 = cuda::add_rmsnorm(x2, std::nullopt, w, 1e-6);
        EXPECT_LE(rel(out2, rms_ref(x2, w, 1e-6)), 2 * bound(t)) << dname(t) << " no residual rows " << rows;
      }
}

TEST(GpuOps, AddRmsNormMatchesEagerBf16Exactly) {
  REQUIRE_GPU();
  torch::manual_seed(2);
  Tensor x = randn({19, 2048}, torch::kBFloat16), r = randn({19, 2048}, torch::kBFloat16);
  Tensor w = randn({2048}, torch::kBFloat16, 0.3) + 1;
  Tensor eager_x = x + r;
  Tensor eager = rms_norm(eager_x, w, 1e-5);  // model/llama.h: transformers' arithmetic
  Tensor out = cuda::add_rmsnorm(x, r, w, 1e-5);
  EXPECT_TRUE(torch::equal(x, eager_x));
  // the same roundings; only the order of the fp32 sum of squares differs
  EXPECT_LE((out.to(torch::kFloat) != eager.to(torch::kFloat)).to(torch::kFloat).mean().item<double>(), 0.01);
}

TEST(GpuOps, RopeQkvToCache) {
  REQUIRE_GPU();
  torch::manual_seed(3);
  struct Shape { int64_t H, Hkv, D; };
  for (auto t : kTypes)
    for (Shape s : {Shape{9, 3, 64}, Shape{32, 8, 64}, Shape{32, 8, 128}, Shape{4, 4, 32}})
      for (int64_t N : {1, 19, 111}) {
        const int64_t slots = 4, max_seq = 300;
        LlamaConfig cfg;
        cfg.head_dim = s.D;
        cfg.rope_theta = 500000;
        cfg.rope_scaling.type = "llama3";
        cfg.rope_scaling.factor = 32;
        Tensor inv = rope_inv_freq(cfg).to(kDev);
        Tensor qkv_big = randn({N, (s.H + 2 * s.Hkv) * s.D + 8}, t);
        Tensor qkv = qkv_big.narrow(1, 0, (s.H + 2 * s.Hkv) * s.D);  // rows not contiguous
        auto i32 = torch::TensorOptions().dtype(torch::kInt).device(kDev);
        Tensor pos = torch::randperm(max_seq, i32).narrow(0, 0, N);  // distinct positions
        Tensor slot = torch::randint(0, slots, {N}, i32);
        Tensor kc = torch::full({slots, s.Hkv, max_seq, s.D}, 7.0, torch::TensorOptions().dtype(t).device(kDev));
        Tensor vc = kc.clone();
        Tensor q = cuda::rope_qkv_to_cache(qkv, pos, slot, inv, kc, vc, s.H, s.Hkv, s.D);
        // reference in fp32
        Tensor f = pos.to(torch::kFloat).unsqueeze(1) * inv.unsqueeze(0);  // (N, D/2)
        Tensor cs = f.cos().view({N, 1, s.D / 2}), sn = f.sin().view({N, 1, s.D / 2});
        auto rot = [&](const Tensor& x) {  // (N, heads, D)
          auto x1 = x.narrow(2, 0, s.D / 2), x2 = x.narrow(2, s.D / 2, s.D / 2);
          return torch::cat({x1 * cs - x2 * sn, x2 * cs + x1 * sn}, 2);
        };
        Tensor qf = qkv.to(torch::kFloat);
        Tensor qr = rot(qf.narrow(1, 0, s.H * s.D).view({N, s.H, s.D}));
        Tensor kr = rot(qf.narrow(1, s.H * s.D, s.Hkv * s.D).view({N, s.Hkv, s.D}));
        Tensor vr = qf.narrow(1, (s.H + s.Hkv) * s.D, s.Hkv * s.D).view({N, s.Hkv, s.D});
        EXPECT_LE(rel(q, qr), 2 * bound(t)) << dname(t) << " q H " << s.H << " N " << N;
        auto pos_l = pos.to(torch::kLong), slot_l = slot.to(torch::kLong);
        using torch::indexing::Slice;
        Tensor kg = kc.index({slot_l, Slice(), pos_l});  // (N, Hkv, D)
        Tensor vg = vc.index({slot_l, Slice(), pos_l});
        EXPECT_LE(rel(kg, kr), 2 * bound(t)) << dname(t) << " k cache";
        EXPECT_EQ(rel(vg, vr), 0.0) << dname(t) << " v cache is a copy";
        // nothing else in the caches was touched
        Tensor mask = torch::ones({slots, max_seq}, torch::TensorOptions().dtype(torch::kBool).device(kDev));
        mask.index_put_({slot_l, pos_l}, false);
        EXPECT_TRUE((kc.permute({0, 2, 1, 3}).index({mask}) == 7).all().item<bool>());
        EXPECT_TRUE((vc.permute({0, 2, 1, 3}).index({mask}) == 7).all().item<bool>());
      }
}

TEST(GpuOps, SwiGLU) {
  REQUIRE_GPU();
  torch::manual_seed(4);
  for (auto t : kTypes)
    for (int64_t rows : {1, 19, 111, 989})
      for (int64_t I : {1536, 8192, 14336, 111}) {
        Tensor big = randn({rows, 2 * I + 16}, t, 2.0);
        Tensor gu = big.narrow(1, 8, 2 * I);  // non-contiguous rows, unaligned start
        Tensor out = cuda::swiglu(gu);
        Tensor g = gu.narrow(1, 0, I).to(torch::kFloat), u = gu.narrow(1, I, I).to(torch::kFloat);
        EXPECT_LE(rel(out, torch::silu(g) * u), 2 * bound(t)) << dname(t) << " rows " << rows << " I " << I;
      }
}

TEST(GpuOps, Gemv) {
  REQUIRE_GPU();
  torch::manual_seed(5);
  for (auto t : kTypes)
    for (int64_t B : {1, 2, 5, 8})
      for (int64_t N : {1, 19, 111, 989, 3072})
        for (int64_t K : {576, 2048, 8192})
          for (int loads : {0, 2, 4, 8})
            for (bool overlap : {false, true}) {
              Tensor W = randn({N, K}, t, 0.05);
              // x written by the kernel just before the GEMV (SwiGLU triggers its dependents early):
              // with overlap, the GEMV must wait for it before reading x.
              Tensor x = cuda::swiglu(randn({B, 2 * K}, t, 2.0));
              Tensor y = cuda::gemv(W, x, loads, overlap);
              Tensor ref = torch::matmul(x.to(torch::kDouble), W.to(torch::kDouble).t());
              // fp32 accumulation over K terms: allow K-proportional rounding for f32
              const double b = t == torch::kFloat ? 1e-5 : bound(t);
              EXPECT_LE(rel(y, ref), b) << dname(t) << " B " << B << " N " << N << " K " << K << " loads " << loads
                                        << " overlap " << overlap;
            }
  Tensor W = randn({64, 100}, torch::kBFloat16), x = randn({1, 100}, torch::kBFloat16);
  EXPECT_THROW(cuda::gemv(W, x), Error);  // K not a multiple of 8: refused, not silently wrong
  Tensor x8 = randn({1, 64}, torch::kBFloat16), W8 = randn({4, 64}, torch::kBFloat16);
  EXPECT_NE(test::error_of([&] { cuda::gemv(W8, x8, 3); }).find("loads=3"), std::string::npos);
}

// The decode fusions: rmsnorm(x) @ (W * g)^T with x normalized inside the GEMV, and y += x @ W^T.
TEST(GpuOps, GemvFusions) {
  REQUIRE_GPU();
  torch::manual_seed(15);
  const double eps = 1e-5;
  for (auto t : kTypes)
    for (int64_t B : {1, 2, 5, 8})
      for (int64_t N : {1, 19, 111, 989, 3072})
        for (int64_t K : {576, 2048, 8192})
          for (int loads : {0, 2})
            for (bool overlap : {false, true}) {
              std::ostringstream at;
              at << dname(t) << " B " << B << " N " << N << " K " << K << " loads " << loads << " overlap " << overlap;
              Tensor W = randn({N, K}, t, 0.05), g = randn({K}, t, 1.0) + 1.0;
              Tensor Wg = (W.to(torch::kFloat) * g.to(torch::kFloat)).to(t);
              Tensor y0 = randn({B, N}, t, 1.0), acc = y0.clone();
              // K = 576: rows of ~1e-3, where eps (1e-5) is most of mean(x^2) and a misplaced eps shows
              Tensor src = randn({B, 2 * K}, t, K == 576 ? 0.05 : 2.0);
              // x is written by the kernel just before each fused GEMV (SwiGLU triggers its dependents
              // early): with overlap, the GEMV must wait for it before reading x (and y).
              Tensor x = cuda::swiglu(src);
              Tensor y = cuda::gemv_rmsnorm(Wg, x, eps, loads, overlap);
              Tensor xn = x.to(torch::kDouble);
              xn = xn * torch::rsqrt(xn.pow(2).mean(-1, true) + eps);
              // against the weights the kernel was given (W * g rounded to t): the GEMV's own error only
              Tensor ref = torch::matmul(xn, Wg.to(torch::kDouble).t());
              EXPECT_LE(rel(y, ref), t == torch::kFloat ? 1e-5 : bound(t)) << "rms_norm " << at.str();

              // accumulate: bit-identical to the unfused pair (gemv, then the dtype's x + r)
              x = cuda::swiglu(src);
              cuda::gemv_accumulate(acc, W, x, loads, overlap);
              EXPECT_TRUE(torch::equal(acc, y0 + cuda::gemv(W, x, loads))) << "accumulate " << at.str();
            }
  Tensor W = randn({64, 64}, torch::kBFloat16), x = randn({2, 64}, torch::kBFloat16), y = randn({2, 64}, torch::kBFloat16);
  EXPECT_NE(test::error_of([&] { cuda::gemv_rmsnorm(W, x, 1e-5, 4); }).find("loads=4 is not one of 0, 2"), std::string::npos);
  EXPECT_NE(test::error_of([&] { cuda::gemv_accumulate(x, W, x); }).find("overlap"), std::string::npos);
  Tensor xy = randn({2, 128}, torch::kBFloat16);  // y and x in one buffer, partly overlapping
  Tensor ya = xy.narrow(1, 0, 64), xa = xy.narrow(1, 32, 64);
  EXPECT_NE(test::error_of([&] { cuda::gemv_accumulate(ya, W, xa); }).find("overlap"), std::string::npos);
  Tensor wrong = randn({2, 65}, torch::kBFloat16);
  EXPECT_NE(test::error_of([&] { cuda::gemv_accumulate(wrong, W, x); }).find("expected (2, 64) with contiguous rows"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { cuda::gemv_rmsnorm(W, randn({9, 64}, torch::kBFloat16), 1e-5); }).find("B<=8"),
            std::string::npos);
}

TEST(GpuOps, DecodeAttention) {
  REQUIRE_GPU();
  torch::manual_seed(6);
  struct Shape { int64_t H, Hkv, D; };
  for (auto t : kTypes)
    for (Shape s : {Shape{9, 3, 64}, Shape{32, 8, 64}, Shape{32, 8, 128}, Shape{16, 16, 128}, Shape{16, 8, 64}, Shape{32, 4, 128}})
      for (int64_t max_seq : {1, 100, 1000, 4096})
        for (int64_t B : {1, 3, 7}) {
          const int64_t slots = B + 2;
          Tensor kc = randn({slots, s.Hkv, max_seq, s.D}, t), vc = randn({slots, s.Hkv, max_seq, s.D}, t);
          auto i32 = torch::TensorOptions().dtype(torch::kInt).device(kDev);
          Tensor slot = torch::randperm(slots, i32).narrow(0, 0, B);
          Tensor len = torch::randint(1, max_seq + 1, {B}, i32);
          len[0] = static_cast<int>(max_seq);
          if (B > 1) len[1] = 0;  // an empty sequence: every split exits, the output is zeros
          Tensor q = randn({B, s.H, s.D}, t);
          // the folded merge's counters: one set for every call of this shape (each call leaves zeros)
          Tensor counters = torch::zeros({B * s.Hkv}, torch::TensorOptions().dtype(torch::kInt).device(kDev));
          for (int64_t splits : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{64}}) {
            Tensor out = cuda::decode_attention(q, kc, vc, slot, len, splits);
            // into NaNs: a head the folded merge left unwritten cannot pass as the combine's output
            Tensor folded = torch::full_like(q, std::numeric_limits<double>::quiet_NaN());
            cuda::decode_attention(q, kc, vc, slot, len, splits, counters, folded);
            EXPECT_TRUE(torch::equal(folded, out)) << "folded merge " << dname(t) << " H " << s.H << " Hkv " << s.Hkv
                                                   << " D " << s.D << " max_seq " << max_seq << " B " << B << " splits " << splits;
            EXPECT_EQ(counters.count_nonzero().item<int64_t>(), 0) << "counters not reset";
            auto sl = slot.cpu(), ln = len.cpu();
            std::vector<Tensor> refs;
            for (int64_t b = 0; b < B; ++b) {
              const int64_t L = ln[b].item<int>();
              if (L == 0) {
                refs.push_back(torch::zeros({s.H, s.D}, torch::TensorOptions().device(kDev)));
                continue;
              }
              auto k = kc[sl[b].item<int>()].narrow(1, 0, L).to(torch::kFloat);  // (Hkv,L,D)
              auto v = vc[sl[b].item<int>()].narrow(1, 0, L).to(torch::kFloat);
              auto qb = q[b].to(torch::kFloat).view({s.Hkv, s.H / s.Hkv, s.D});
              auto sc = torch::matmul(qb, k.transpose(1, 2)) / std::sqrt(static_cast<double>(s.D));
              refs.push_back(torch::matmul(torch::softmax(sc, -1), v).view({s.H, s.D}));
            }
            EXPECT_LE(rel(out, torch::stack(refs)), bound(t) * (t == torch::kFloat ? 10 : 1))
                << dname(t) << " H " << s.H << " Hkv " << s.Hkv << " D " << s.D << " max_seq " << max_seq << " B " << B
                << " splits " << splits;
          }
        }
  // Many folded calls back to back on the stream, 64 splits: an ordering race between a block's
  // partials and the count would show as a difference in some call.
  const int64_t B = 7, Hkv = 8, H = 32, D = 64, max_seq = 4096;
  Tensor kc = randn({B, Hkv, max_seq, D}, torch::kBFloat16), vc = randn({B, Hkv, max_seq, D}, torch::kBFloat16);
  auto i32 = torch::TensorOptions().dtype(torch::kInt).device(kDev);
  Tensor slot = torch::arange(B, i32), len = torch::randint(1, max_seq + 1, {B}, i32), q = randn({B, H, D}, torch::kBFloat16);
  Tensor counters = torch::zeros({B * Hkv}, i32);
  Tensor ref = cuda::decode_attention(q, kc, vc, slot, len, 64);
  std::vector<Tensor> outs;
  for (int i = 0; i < 200; ++i) outs.push_back(cuda::decode_attention(q, kc, vc, slot, len, 64, counters));
  int same = 0;
  for (const auto& o : outs) same += torch::equal(o, ref);
  EXPECT_EQ(same, 200) << "folded calls equal to the combine's output";
  EXPECT_EQ(counters.count_nonzero().item<int64_t>(), 0);
}

TEST(GpuOps, SampleGreedyIsArgmax) {
  REQUIRE_GPU();
  torch::manual_seed(7);
  for (auto t : {torch::kFloat, torch::kBFloat16})
    for (int64_t V : {1, 1000, 128256}) {
      const int64_t B = 33;
      Tensor logits = randn({B, V}, torch::kFloat, 3.0).to(t);
      auto f32 = torch::TensorOptions().device(kDev);
      Tensor temp = torch::zeros({B}, f32), topp = torch::ones({B}, f32);
      Tensor topk = torch::zeros({B}, f32.dtype(torch::kInt));
      Tensor seed = torch::arange(B, f32.dtype(torch::kLong)), counter = torch::zeros({B}, f32.dtype(torch::kLong));
      Tensor tok = cuda::sample(logits, temp, topk, topp, seed, counter);
      EXPECT_TRUE(torch::equal(tok.to(torch::kLong), logits.to(torch::kFloat).argmax(-1))) << dname(t) << " V " << V;
      EXPECT_TRUE((counter == 1).all().item<bool>());
      // top_k = 1 at any temperature is greedy too
      temp.fill_(1.3);
      topk.fill_(1);
      tok = cuda::sample(logits, temp, topk, topp, seed, counter);
      // (bf16 logits can tie at the maximum: top-k keeps ties, so compare values, not indices)
      auto lf = logits.to(torch::kFloat);
      EXPECT_TRUE(torch::equal(lf.gather(1, tok.to(torch::kLong).unsqueeze(1)).squeeze(1), std::get<0>(lf.max(-1))))
          << dname(t) << " top_k=1";
    }
}

// The distribution after temperature, top-k then top-p (transformers' order and semantics).
std::vector<double> filtered_probs(const Tensor& row, double temp, int64_t k, double p) {
  auto z = (row.to(torch::kCPU, torch::kDouble) / temp);
  const int64_t V = z.size(0);
  if (k > 0 && k < V) {
    double kth = std::get<0>(z.topk(k)).min().item<double>();
    z = torch::where(z < kth, torch::full_like(z, -INFINITY), z);
  }
  auto pr = torch::softmax(z, 0);
  if (p < 1) {
    auto [sorted, idx] = pr.sort(0, true);
    auto cum = sorted.cumsum(0);
    // keep the smallest prefix whose mass reaches p
    auto keep_sorted = (cum - sorted) < p;
    auto keep = torch::zeros_like(keep_sorted).scatter(0, idx, keep_sorted);
    pr = torch::where(keep, pr, torch::zeros_like(pr));
    pr = pr / pr.sum();
  }
  return std::vector<double>(pr.data_ptr<double>(), pr.data_ptr<double>() + V);
}

TEST(GpuOps, SampleDistributionAndDeterminism) {
  REQUIRE_GPU();
  torch::manual_seed(8);
  const int64_t V = 50, B = 40000;
  Tensor row = randn({V}, torch::kFloat, 1.5);
  Tensor logits = row.unsqueeze(0).expand({B, V}).contiguous();
  auto o = torch::TensorOptions().device(kDev);
  struct Case { double temp; int k; double p; };
  for (Case c : {Case{1.0, 0, 1.0}, Case{0.7, 20, 1.0}, Case{0.7, 0, 0.9}, Case{1.3, 10, 0.8}}) {
    Tensor temp = torch::full({B}, c.temp, o), topp = torch::full({B}, c.p, o);
    Tensor topk = torch::full({B}, c.k, o.dtype(torch::kInt));
    Tensor seed = torch::arange(B, o.dtype(torch::kLong)) * 7919 + 3, counter = torch::zeros({B}, o.dtype(torch::kLong));
    Tensor tok = cuda::sample(logits, temp, topk, topp, seed, counter).cpu().to(torch::kLong);
    auto expect = filtered_probs(row, c.temp, c.k, c.p);
    auto counts = torch::bincount(tok, {}, V);
    for (int64_t j = 0; j < V; ++j) {
      const double f = counts[j].item<int64_t>() / static_cast<double>(B), e = expect[j];
      if (e == 0) {
        EXPECT_EQ(f, 0) << "token " << j << " is filtered out but was sampled (temp " << c.temp << " k " << c.k << " p " << c.p << ")";
      } else {
        EXPECT_LE(std::abs(f - e), 5 * std::sqrt(e * (1 - e) / B) + 1e-3)
            << "token " << j << " freq " << f << " expected " << e << " (temp " << c.temp << " k " << c.k << " p " << c.p << ")";
      }
    }
    // the same seeds and counters draw the same tokens; the advanced counters draw new ones
    Tensor counter0 = torch::zeros({B}, o.dtype(torch::kLong));
    Tensor again = cuda::sample(logits, temp, topk, topp, seed, counter0).cpu().to(torch::kLong);
    EXPECT_TRUE(torch::equal(tok, again));
    Tensor next = cuda::sample(logits, temp, topk, topp, seed, counter0).cpu().to(torch::kLong);
    EXPECT_FALSE(torch::equal(tok, next));
  }
}

// Plain per-row reference of the KD chunk (fp64 autograd), same definitions as distill/kd_loss.h.
struct KdRef { Tensor kd, ce, grad; };
KdRef kd_reference(const Tensor& zs_in, const Tensor& zt_in, const Tensor& labels, const cuda::KdChunkOptions& o) {
  Tensor zs = zs_in.to(torch::kCPU, torch::kDouble).set_requires_grad(true);
  Tensor zt = zt_in.to(torch::kCPU, torch::kDouble);
  const int64_t V = zs.size(1), Vc = std::min(V, zt.size(1));
  auto lab = labels.cpu();
  auto valid = (lab != o.ignore_index).to(torch::kDouble);
  auto lq = torch::log_softmax(zs.narrow(1, 0, Vc) / o.tau, -1), lp = torch::log_softmax(zt.narrow(1, 0, Vc) / o.tau, -1);
  Tensor kd;
  if (o.kind == 0) kd = (lp.exp() * (lp - lq)).sum(-1);
  else if (o.kind == 1) kd = (lq.exp() * (lq - lp)).sum(-1);
  else {
    auto lm = torch::logaddexp(std::log(o.beta) + lp, std::log(1 - o.beta) + lq);
    kd = o.beta * (lp.exp() * (lp - lm)).sum(-1) + (1 - o.beta) * (lq.exp() * (lq - lm)).sum(-1);
  }
  auto safe = torch::where(lab == o.ignore_index, torch::zeros_like(lab), lab);
  Tensor ce = -torch::log_softmax(zs, -1).gather(1, safe.unsqueeze(1)).squeeze(1);
  Tensor total = (((o.kd_weight * o.w_kd) * kd + (1 - o.kd_weight) * ce) * valid).sum() * o.grad_scale;
  total.backward();
  return {(kd * valid).detach(), (ce * valid).detach(), zs.grad()};
}

TEST(GpuOps, KdLossChunkMatchesReference) {
  REQUIRE_GPU();
  torch::manual_seed(9);
  for (auto t : kTypes)
    for (int kind : {0, 1, 2})
      for (int64_t N : {1, 19, 111})
        for (int64_t V : {1000, 50257}) {
          for (double tau : {1.0, 2.0}) {
            cuda::KdChunkOptions o;
            o.kind = kind;
            o.tau = tau;
            o.beta = 0.3;
            o.kd_weight = kind == 2 ? 1.0 : 0.6;
            o.w_kd = tau * tau;
            o.grad_scale = 1.0 / N;
            const int64_t Vt = V + (kind == 1 ? 64 : 0);  // a teacher padded past the student's vocabulary
            Tensor zs = randn({N, V}, t, 3.0), zt = randn({N, Vt}, t, 3.0);
            Tensor labels = torch::randint(0, V, {N}, torch::TensorOptions().dtype(torch::kLong).device(kDev));
            if (N > 1) labels[1] = o.ignore_index;
            // fp16 cannot hold gradients below 6e-5 except as subnormals: with no CE term every entry
            // is ~1/(V*N) and the relative error measured 1e-2..1e-1 on an H200 (2026-11-27). The
            // fused loss therefore computes fp16 inputs in fp32; this pairing is not a supported use.
            if (t == torch::kHalf && o.kd_weight == 1.0) continue;
            KdRef ref = kd_reference(zs, zt, labels, o);
            Tensor grad = torch::empty_like(zs);
            auto [kd, ce] = cuda::kd_loss_chunk(zs, zt, labels, grad, o);
            const double b = t == torch::kFloat ? 1e-5 : 2 * bound(t);
            std::string what = std::string(dname(t)) + " kind " + std::to_string(kind) + " N " + std::to_string(N) +
                               " V " + std::to_string(V) + " tau " + std::to_string(tau);
            EXPECT_LE(rel(kd, ref.kd), t == torch::kFloat ? 1e-5 : 5e-2) << what << " kd";
            if (o.kd_weight < 1) EXPECT_LE(rel(ce, ref.ce), t == torch::kFloat ? 1e-5 : 2e-2) << what << " ce";
            else EXPECT_EQ(ce.abs().sum().item<double>(), 0.0) << what << " ce is not computed at kd_weight 1";
            EXPECT_LE(rel(grad, ref.grad), b * (t == torch::kFloat ? 1 : 2)) << what << " grad";
            // in place over the student logits gives the same gradient
            Tensor zs2 = zs.clone();
            auto [kd2, ce2] = cuda::kd_loss_chunk(zs2, zt, labels, zs2, o);
            EXPECT_TRUE(torch::equal(zs2, grad)) << what << " in place";
            EXPECT_TRUE(torch::equal(kd2, kd) && torch::equal(ce2, ce)) << what << " in place: losses";
          }
        }
}

TEST(GpuOps, FusedKdLossOnCudaMatchesPlainLoss) {
  REQUIRE_GPU();
  torch::manual_seed(10);
  const int64_t N = 300, C = 64, Ct = 96, V = 5000;
  for (const char* kind : {"fkl", "rkl", "jsd"})
    for (double kdw : {1.0, 0.5}) {
      auto o32 = torch::TensorOptions().device(kDev);
      Tensor h = torch::randn({N, C}, o32).set_requires_grad(true);
      Tensor w = (torch::randn({V, C}, o32) * 0.2).set_requires_grad(true);
      Tensor labels = torch::randint(0, V, {N}, o32.dtype(torch::kLong));
      labels.narrow(0, 0, 5).fill_(-100);
      OnlineTeacher teacher{torch::randn({N, Ct}, o32), torch::randn({V + 8, Ct}, o32) * 0.2, 1.0};
      KdLossOptions opt;
      opt.kind = kind;
      opt.kd_weight = kdw;
      opt.temperature = 1.5;
      opt.chunk_tokens = 128;  // 3 chunks, the last one short
      auto parts = fused_kd_loss(h, w, labels, {teacher}, {}, opt);
      parts.loss.backward();
      Tensor gh = h.grad().clone(), gw = w.grad().clone();
      h.mutable_grad().reset();
      w.mutable_grad().reset();
      Tensor ref = reference_kd_loss(h, w, labels, {teacher}, {}, opt);
      ref.backward();
      EXPECT_LE(std::abs(parts.loss.item<double>() - ref.item<double>()) / std::abs(ref.item<double>()), 1e-5)
          << kind << " kd_weight " << kdw << ": loss " << parts.loss.item<double>() << " vs plain " << ref.item<double>();
      EXPECT_LE(rel(gh, h.grad()), 1e-5) << kind << " d hidden";
      EXPECT_LE(rel(gw, w.grad()), 1e-5) << kind << " d weight";
    }
}

Llama tiny_llama(torch::ScalarType dtype, int64_t D, int64_t H, int64_t Hkv) {
  LlamaConfig c;
  c.vocab_size = 1000;
  c.hidden_size = 256;
  c.intermediate_size = 512;
  c.num_hidden_layers = 3;
  c.num_attention_heads = H;
  c.num_key_value_heads = Hkv;
  c.head_dim = D;
  c.rope_theta = 500000;
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8;
  c.max_position_embeddings = 4096;
  c.eos_token_id = {1};
  Llama m(c);
  m->init_random(11, 0.08);
  {
    // init_random leaves the norm weights at 1, where folding them into the next projection
    // (fuse_norm), or applying the wrong one, would change nothing: give each its own values in
    // [0.5, 1.5], the same for every dtype.
    torch::NoGradGuard ng;
    int k = 0;
    auto set = [&k](Tensor w) {
      ++k;
      w.copy_(0.5 + (torch::sin(torch::arange(w.numel(), torch::kDouble) * (0.37 * k) + k) + 1) / 2);
    };
    for (const auto& l : m->layers()) {
      set(l.attn_norm->weight);
      set(l.ffn_norm->weight);
    }
    set(m->final_norm_weight());
  }
  m->to(dtype);
  return m;
}

TEST(GpuBackend, MatchesTorchBackendLogitsAndGreedy) {
  REQUIRE_GPU();
  for (auto [D, H, Hkv] : {std::tuple<int64_t, int64_t, int64_t>{64, 4, 2}, {128, 6, 2}}) {
    Llama m = tiny_llama(torch::kFloat, D, H, Hkv);
    auto cpu = make_torch_backend(m);
    CudaBackendOptions opt;
    opt.dtype = torch::kFloat;
    for (int run = 0; run < 6; ++run) {  // graphs off/on x (plain, fuse_norm, fuse_norm + fold_combine)
      const bool graphs = run % 2 == 1;
      opt.graphs = graphs;
      opt.fuse_norm = run >= 2;
      opt.fold_combine = run >= 4;
      auto gpu = make_cuda_backend(m, opt);
      cpu->reserve(3, 200);
      gpu->reserve(3, 200);
      std::mt19937 rng(5);
      std::vector<int64_t> prompt(40);
      for (auto& x : prompt) x = rng() % 1000;
      auto ids = torch::tensor(prompt, torch::kLong).unsqueeze(0);
      for (int64_t s = 0; s < 3; ++s) {
        auto a = cpu->step(ids, {s}, {0}), b = gpu->step(ids, {s}, {0});
        EXPECT_LE(rel(b, a), 1e-4) << "prefill D " << D << " graphs " << graphs << " fuse_norm " << opt.fuse_norm;
      }
      // a second prefill chunk continues the cache (masked SDPA)
      auto more = torch::tensor(std::vector<int64_t>{5, 6, 7, 8}, torch::kLong).unsqueeze(0);
      EXPECT_LE(rel(gpu->step(more, {2}, {40}), cpu->step(more, {2}, {40})), 1e-4);
      // batched decode with different positions
      for (int64_t i = 0; i < 20; ++i) {
        auto tok = torch::tensor(std::vector<int64_t>{int64_t(rng() % 1000), int64_t(rng() % 1000), int64_t(rng() % 1000)}, torch::kLong).unsqueeze(1);
        std::vector<int64_t> start = {40 + i, 40 + i, 44 + i};
        auto a = cpu->step(tok, {0, 1, 2}, start), b = gpu->step(tok, {0, 1, 2}, start);
        EXPECT_LE(rel(b, a), 1e-4) << "decode step " << i << " D " << D << " graphs " << graphs << " fuse_norm "
                                   << opt.fuse_norm;
      }
    }
    // greedy through the engine, and decode_loop's on-device greedy (graphs, sampling on the device),
    // equal the CPU engine's tokens, with and without fuse_norm
    Engine ecpu(make_torch_backend(m));
    GenerationRequest r;
    r.prompt = {3, 14, 15, 92, 65, 35};
    r.sampling.max_tokens = 32;
    r.sampling.ignore_eos = true;
    auto rc = ecpu.generate({r, r});
    for (bool fuse : {false, true}) {
      opt.graphs = true;
      opt.fuse_norm = fuse;
      opt.fold_combine = fuse;
      auto gpu = make_cuda_backend(m, opt);
      CudaBackend* raw = gpu.get();
      Engine egpu(std::move(gpu));
      auto rg = egpu.generate({r, r});
      EXPECT_EQ(rc[0].tokens, rg[0].tokens) << "D " << D << " fuse_norm " << fuse;
      EXPECT_EQ(rg[0].tokens, rg[1].tokens);
      // decode_loop from the same prefill: tokens 2.. equal the engine's
      raw->reserve(2, 64);
      auto ids = torch::tensor(std::vector<int64_t>(r.prompt.begin(), r.prompt.end()), torch::kLong).unsqueeze(0);
      raw->step(ids, {0}, {0});
      raw->step(ids, {1}, {0});
      std::vector<int32_t> first = {rc[0].tokens[0], rc[0].tokens[0]};
      auto loop = raw->decode_loop(first, {0, 1}, {6, 6}, 31, {DeviceSampling{}, DeviceSampling{}});
      for (int64_t i = 0; i < 31; ++i) {
        EXPECT_EQ(loop[0][i].item<int>(), rc[0].tokens[i + 1]) << "decode_loop step " << i << " fuse_norm " << fuse;
        EXPECT_EQ(loop[1][i].item<int>(), rc[0].tokens[i + 1]);
      }
    }
  }
}

// Every GEMV variant sums each lane's products in the same order, so the variants, with or without
// programmatic dependent launch, and with or without graphs, give bit-identical logits; a GEMV that
// read x before the kernel writing it had finished would not.
TEST(GpuBackend, GemvVariantsAndOverlapAgreeExactly) {
  REQUIRE_GPU();
  Llama m = tiny_llama(torch::kBFloat16, 64, 4, 2);
  std::vector<Tensor> ref, ref_fused;  // fuse_norm rounds differently (W * g): its own reference
  for (bool fuse : {false, true})
  for (bool fold : {false, true})  // the folded attention merge computes the same bits
  for (int loads : {0, 2, 4, 8})
    for (bool overlap : {false, true})
      for (bool graphs : {false, true}) {
        if (fuse && loads > 2) continue;
        CudaBackendOptions opt;
        opt.gemv_loads = loads;
        opt.overlap = overlap;
        opt.graphs = graphs;
        opt.fuse_norm = fuse;
        opt.fold_combine = fold;
        auto gpu = make_cuda_backend(m, opt);
        gpu->reserve(2, 128);
        torch::manual_seed(9);
        auto ids = torch::randint(0, 1000, {1, 24}, torch::kLong);
        std::vector<Tensor> got = {gpu->step(ids, {0}, {0}), gpu->step(ids, {1}, {0})};
        for (int64_t i = 0; i < 16; ++i) {
          auto tok = torch::randint(0, 1000, {2, 1}, torch::kLong);
          got.push_back(gpu->step(tok, {0, 1}, {24 + i, 24 + i}));
        }
        auto& r = fuse ? ref_fused : ref;
        if (r.empty()) {
          r = got;
          continue;
        }
        for (size_t j = 0; j < got.size(); ++j)
          EXPECT_TRUE(torch::equal(got[j], r[j])) << "loads " << loads << " overlap " << overlap << " graphs " << graphs
                                                  << " fuse_norm " << fuse << " fold_combine " << fold << " step " << j;
      }
}

// bf16 weights, activations and cache against the fp32 model: a few roundings to 8 bits per layer
// over 3 random layers. On an H200 (2026-11-27) it stayed under 3e-2 in four calls and reached
// 3.15e-2 at one step in a fifth, whose tokens differed only because a new test before it drew from
// the same generator: hence the seed and the 5e-2 bound. The exact checks are the fp32 comparison
// above (1e-4) and the variant test (bit-identical).
TEST(GpuBackend, Bf16CloseToTorchBackend) {
  REQUIRE_GPU();
  torch::manual_seed(13);
  Llama m = tiny_llama(torch::kBFloat16, 64, 4, 2);
  Llama m32 = tiny_llama(torch::kFloat, 64, 4, 2);
  auto cpu = make_torch_backend(m32);
  cpu->reserve(1, 100);
  auto ids = torch::randint(0, 1000, {1, 30}, torch::kLong);
  std::vector<Tensor> toks;
  for (int64_t i = 0; i < 10; ++i) toks.push_back(torch::randint(0, 1000, {1, 1}, torch::kLong));
  for (bool fuse : {false, true}) {
    CudaBackendOptions opt;
    opt.fuse_norm = fuse;
    auto gpu = make_cuda_backend(m, opt);
    gpu->reserve(1, 100);
    EXPECT_LE(rel(gpu->step(ids, {0}, {0}), cpu->step(ids, {0}, {0})), 5e-2) << "fuse_norm " << fuse;
    for (int64_t i = 0; i < 10; ++i)
      EXPECT_LE(rel(gpu->step(toks[i], {0}, {30 + i}), cpu->step(toks[i], {0}, {30 + i})), 5e-2)
          << i << " fuse_norm " << fuse;
  }
}

TEST(GpuOps, ErrorsNameTheProblem) {
  REQUIRE_GPU();
  Tensor x = randn({4, 64}, torch::kFloat), w = randn({32}, torch::kFloat);
  EXPECT_NE(test::error_of([&] { cuda::add_rmsnorm(x, std::nullopt, w, 1e-5); }).find("weight has shape (32)"), std::string::npos);
  Tensor xi = x.to(torch::kInt);
  EXPECT_NE(test::error_of([&] { cuda::swiglu(xi); }).find("dtype Int"), std::string::npos);
  Tensor xc = x.cpu();
  EXPECT_NE(test::error_of([&] { cuda::swiglu(xc); }).find("must be a CUDA tensor"), std::string::npos);
  CudaBackendOptions opt;
  opt.fuse_norm = true;
  opt.gemv_loads = 4;
  Llama m = tiny_llama(torch::kFloat, 64, 4, 2);
  EXPECT_NE(test::error_of([&] { make_cuda_backend(m, opt); }).find("fuse_norm needs gemv=true and gemv_loads 0 or 2"),
            std::string::npos);
  Tensor q = randn({1, 4, 64}, torch::kFloat), kc = randn({2, 2, 16, 64}, torch::kFloat);
  auto i32 = torch::TensorOptions().dtype(torch::kInt).device(kDev);
  Tensor slot = torch::zeros({1}, i32), len = torch::ones({1}, i32);
  Tensor c64 = torch::zeros({2}, torch::TensorOptions().dtype(torch::kLong).device(kDev));
  EXPECT_NE(test::error_of([&] { cuda::decode_attention(q, kc, kc, slot, len, 0, c64); }).find("counters must be"),
            std::string::npos);
  Tensor c1 = torch::zeros({1}, i32);  // B*Hkv = 2 needed
  EXPECT_NE(test::error_of([&] { cuda::decode_attention(q, kc, kc, slot, len, 0, c1); }).find("at least B*Hkv = 2"),
            std::string::npos);
  Tensor ccpu = torch::zeros({2}, torch::kInt);
  EXPECT_NE(test::error_of([&] { cuda::decode_attention(q, kc, kc, slot, len, 0, ccpu); }).find("must be a CUDA tensor"),
            std::string::npos);
  Tensor bad_out = randn({1, 4, 32}, torch::kFloat);
  EXPECT_NE(test::error_of([&] { cuda::decode_attention(q, kc, kc, slot, len, 0, {}, bad_out); }).find("out must be"),
            std::string::npos);
}

// A trainer on a GPU saves from CUDA tensors: the HF writer, the GGUF writer and the training
// checkpoint (weights and Adam state) bring them to the host, and what they write equals a save of
// the same values from CPU tensors. (Before the writers copied to the host, the first checkpoint of
// a GPU distillation run crashed reading device memory.)
TEST(GpuTraining, CheckpointsSaveFromCudaTensors) {
  REQUIRE_GPU();
  Llama m = tiny_llama(torch::kFloat, 64, 4, 2);
  std::map<std::string, Tensor> on_cpu, on_gpu;
  for (const auto& p : m->named_parameters()) {
    on_cpu[p.key()] = p.value().detach().clone();
    on_gpu[p.key()] = p.value().detach().to(kDev);
  }
  const std::string dir = test::scratch_dir("gpu_save");
  SaveOptions so;
  so.dtype = torch::kBFloat16;
  save_hf_checkpoint(dir + "/from_cpu", m->config(), on_cpu, so);
  save_hf_checkpoint(dir + "/from_gpu", m->config(), on_gpu, so);
  EXPECT_EQ(test::read_all(dir + "/from_gpu/model.safetensors"), test::read_all(dir + "/from_cpu/model.safetensors"));
  GgufExportOptions go;
  go.dtype = "q8_0";
  write_gguf(dir + "/cpu.gguf", m->config(), on_cpu, go);
  write_gguf(dir + "/gpu.gguf", m->config(), on_gpu, go);
  EXPECT_EQ(test::read_all(dir + "/gpu.gguf"), test::read_all(dir + "/cpu.gguf"));

  // A training checkpoint of a model and an Adam state on the GPU, resumed into a fresh model there.
  m->to(kDev);
  torch::optim::AdamW opt(m->parameters(), torch::optim::AdamWOptions(1e-3));
  auto ids = torch::randint(0, 1000, {2, 16}, torch::TensorOptions().dtype(torch::kLong).device(kDev));
  m->forward(ids).logits.to(torch::kFloat).pow(2).mean().backward();
  opt.step();
  TrainState st;
  st.step = 1;
  st.loader_state = "{}";
  st.rng_state = rng_state_hex();
  const std::string ck = save_train_checkpoint(dir + "/run", m, opt, st, 2);
  Llama m2 = tiny_llama(torch::kFloat, 64, 4, 2);
  m2->to(kDev);
  torch::optim::AdamW opt2(m2->parameters(), torch::optim::AdamWOptions(1e-3));
  TrainState back = load_train_checkpoint(ck, m2, opt2, /*load_optimizer=*/true);
  EXPECT_EQ(back.step, 1);
  auto a = m->named_parameters(), b = m2->named_parameters();
  for (const auto& p : a) EXPECT_TRUE(torch::equal(p.value(), b[p.key()])) << p.key();
  // Adam's moments came back: one more identical step leaves identical weights.
  for (auto* o : {&opt, &opt2}) o->zero_grad();
  m->forward(ids).logits.to(torch::kFloat).pow(2).mean().backward();
  m2->forward(ids).logits.to(torch::kFloat).pow(2).mean().backward();
  opt.step();
  opt2.step();
  for (const auto& p : a) EXPECT_TRUE(torch::equal(p.value(), b[p.key()])) << "after a step: " << p.key();
  std::filesystem::remove_all(dir);
}

// Runs everywhere: without a GPU the CUDA backend refuses with a clear message, never crashes.
TEST(GpuBackend, RefusesClearlyWithoutGpu) {
  if (cuda::available()) GTEST_SKIP() << "a GPU is present";
  Llama m = tiny_llama(torch::kFloat, 64, 4, 2);
  std::string e = test::error_of([&] { make_cuda_backend(m); });
  EXPECT_TRUE(e.find("CUDA") != std::string::npos) << e;
}

}  // namespace
}  // namespace bonsai
