// GPU benchmarks for scripts/gpu/check.sh, each against a peer timed in the same process on the same
// GPU (the transformers peers run beside it from scripts/gpu/peer_*.py):
//   ceilings  device-to-device copy bandwidth and bf16 GEMM rate (the two numbers every other
//             figure is read against)
//   kernels   each fused kernel vs the ATen ops it replaces; time, GB/s, and the byte floor
//   decode    Llama-3.2-1B-shaped model (random bf16): tokens/s at batch 1 and 32 through the CUDA
//             backend (graphs on/off, GEMV vs cuBLAS), achieved HBM bandwidth per token
//   distill   one step: 8B-shaped teacher (bf16, no grad), 1B-shaped student (bf16), seq 2048,
//             fused chunked KD+CE loss; tokens/s, MFU, peak memory (whole step and the loss)
// Timing: CUDA events after warm-up, median of repeats. Output: one JSON object per line.
//   bench_gpu [ceilings] [kernels] [decode] [distill]     (default: all)
//   bench_gpu decode-profile    two batch-1 decode steps (no graphs) between cudaProfilerStart/Stop,
//                               for `ncu --profile-from-start off` (scripts/gpu/profile_decode.sh)
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <cuda_profiler_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "distill/kd_loss.h"
#include "model/llama.h"
#include "model/tensor_names.h"
#include "runtime/cuda_backend.h"
#include "runtime/cuda_ops.h"

using namespace bonsai;
using torch::Tensor;
using json = nlohmann::json;

namespace {

const torch::Device kDev(torch::kCUDA, 0);
double g_copy_gbs = 0, g_mm_tflops = 0;
std::string g_gpu;

void emit(json j) {
  j["device"] = g_gpu;
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
}

// Median milliseconds of fn over `reps` runs after `warm` runs, each timed with CUDA events.
double time_ms(const std::function<void()>& fn, int warm = 3, int reps = 20) {
  for (int i = 0; i < warm; ++i) fn();
  std::vector<double> ms;
  auto stream = at::cuda::getCurrentCUDAStream();
  for (int i = 0; i < reps; ++i) {
    at::cuda::CUDAEvent a(cudaEventDefault), b(cudaEventDefault);
    a.record(stream);
    fn();
    b.record(stream);
    b.synchronize();
    ms.push_back(a.elapsed_time(b));
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

LlamaConfig llama_1b() {
  LlamaConfig c;
  c.vocab_size = 128256;
  c.hidden_size = 2048;
  c.intermediate_size = 8192;
  c.num_hidden_layers = 16;
  c.num_attention_heads = 32;
  c.num_key_value_heads = 8;
  c.head_dim = 64;
  c.max_position_embeddings = 131072;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 500000;
  c.rope_scaling = {"llama3", 32.0, 1.0, 4.0, 8192};
  c.tie_word_embeddings = true;
  c.eos_token_id = {128001};
  return c;
}

LlamaConfig llama_8b() {
  LlamaConfig c = llama_1b();
  c.hidden_size = 4096;
  c.intermediate_size = 14336;
  c.num_hidden_layers = 32;
  c.head_dim = 128;
  c.rope_scaling.factor = 8.0;
  c.tie_word_embeddings = false;
  return c;
}

// Random bf16 weights made directly on the GPU (normal(0, 0.02), norms 1).
Llama random_model(const LlamaConfig& cfg, uint64_t seed) {
  Llama m(cfg);
  torch::manual_seed(seed);
  std::map<std::string, Tensor> w;
  auto o = torch::TensorOptions().device(kDev).dtype(torch::kBFloat16);
  for (const auto& s : llama_tensor_specs(cfg)) {
    const bool norm = s.role == TensorRole::kAttnNorm || s.role == TensorRole::kFfnNorm || s.role == TensorRole::kOutputNorm;
    w[s.hf_name] = norm ? torch::ones(s.shape, o) : torch::randn(s.shape, o) * 0.02;
  }
  m->load_state(w, "random " + std::to_string(cfg.num_parameters()) + "-parameter model");
  return m;
}

void ceilings() {
  const int64_t n = int64_t{1} << 30;  // 2 GiB of bf16
  Tensor a = torch::randn({n}, torch::TensorOptions().device(kDev).dtype(torch::kBFloat16)), b = torch::empty_like(a);
  double ms = time_ms([&] { b.copy_(a); }, 3, 20);
  g_copy_gbs = 2.0 * n * 2 / (ms * 1e-3) / 1e9;
  Tensor x = torch::randn({8192, 8192}, a.options()), y = torch::randn({8192, 8192}, a.options());
  double mm = time_ms([&] { at::mm(x, y); }, 3, 20);
  g_mm_tflops = 2.0 * 8192.0 * 8192 * 8192 / (mm * 1e-3) / 1e12;
  emit({{"bench", "ceilings"}, {"copy_GBps", g_copy_gbs}, {"copy_bytes", 4 * n}, {"bf16_mm_TFLOPs", g_mm_tflops},
        {"mm_shape", "8192^3 random"}});
}

void kernel_row(const std::string& name, const std::string& shape, double bytes, double ours_ms, double peer_ms,
                const std::string& peer) {
  emit({{"bench", "kernel"}, {"kernel", name}, {"shape", shape}, {"ours_us", ours_ms * 1e3}, {"peer", peer},
        {"peer_us", peer_ms * 1e3}, {"speedup", peer_ms / ours_ms}, {"floor_bytes", bytes},
        {"ours_GBps", bytes / (ours_ms * 1e-3) / 1e9}, {"frac_of_copy_bw", bytes / (ours_ms * 1e-3) / 1e9 / g_copy_gbs}});
}

void kernels() {
  torch::NoGradGuard ng;
  auto bf = torch::TensorOptions().device(kDev).dtype(torch::kBFloat16);
  {  // residual add + RMSNorm: read x, r, w; write x, out
    const int64_t R = 4096, C = 4096;
    Tensor x = torch::randn({R, C}, bf), r = torch::randn({R, C}, bf), w = torch::randn({C}, bf);
    Tensor x2 = x.clone();
    double ours = time_ms([&] { cuda::add_rmsnorm(x, r, w, 1e-5); });
    double peer = time_ms([&] { x2.add_(r); rms_norm(x2, w, 1e-5); });
    kernel_row("add_rmsnorm", "4096x4096 bf16", 4.0 * R * C * 2, ours, peer, "aten add_ + rms_norm (6 ops)");
  }
  {  // SwiGLU: read (R, 2I), write (R, I)
    const int64_t R = 4096, I = 14336;
    Tensor gu = torch::randn({R, 2 * I}, bf);
    double ours = time_ms([&] { cuda::swiglu(gu); });
    double peer = time_ms([&] { torch::silu(gu.narrow(1, 0, I)) * gu.narrow(1, I, I); });
    kernel_row("swiglu", "4096x14336 bf16", 3.0 * R * I * 2, ours, peer, "aten silu * up");
  }
  for (auto [N, K] : {std::pair<int64_t, int64_t>{128256, 2048}, {16384, 2048}, {2048, 8192}, {3072, 2048}}) {
    for (int64_t B : {1, 4}) {
      // rotate over several weight copies so the 50-60 MB L2 cannot hold the matrix between runs
      const int64_t copies = std::max<int64_t>(1, std::min<int64_t>(8, (512ll << 20) / (N * K * 2)));
      std::vector<Tensor> Ws;
      for (int64_t i = 0; i < copies; ++i) Ws.push_back(torch::randn({N, K}, bf) * 0.02);
      Tensor x = torch::randn({B, K}, bf);
      size_t i = 0, j = 0;
      double ours = time_ms([&] { cuda::gemv(Ws[i++ % Ws.size()], x); }, 3, 40);
      double peer = time_ms([&] { at::mm(x, Ws[j++ % Ws.size()].t()); }, 3, 40);
      kernel_row("gemv", "B" + std::to_string(B) + " N" + std::to_string(N) + " K" + std::to_string(K) + " bf16",
                 1.0 * N * K * 2, ours, peer, "cuBLAS at::mm");
    }
  }
  for (auto [B, D, L] : {std::tuple<int64_t, int64_t, int64_t>{1, 64, 4096}, {32, 64, 4096}, {32, 128, 4096}, {1, 128, 32768}}) {
    const int64_t H = 32, Hkv = 8;
    Tensor kc = torch::randn({B, Hkv, L, D}, bf), vc = torch::randn({B, Hkv, L, D}, bf);
    Tensor q = torch::randn({B, H, D}, bf);
    auto i32 = torch::TensorOptions().device(kDev).dtype(torch::kInt);
    Tensor slot = torch::arange(B, i32), len = torch::full({B}, L, i32);
    double ours = time_ms([&] { cuda::decode_attention(q, kc, vc, slot, len); });
    Tensor q4 = q.unsqueeze(2);
    double peer = time_ms([&] { at::scaled_dot_product_attention(q4, kc, vc, {}, 0.0, false, std::nullopt, true); });
    kernel_row("decode_attention", "B" + std::to_string(B) + " H32 Hkv8 D" + std::to_string(D) + " len" + std::to_string(L),
               2.0 * B * Hkv * L * D * 2, ours, peer, "aten SDPA (enable_gqa) on the exact-length cache");
  }
  {
    const int64_t B = 32, V = 128256;
    auto f = torch::TensorOptions().device(kDev);
    Tensor logits = torch::randn({B, V}, bf) * 3;
    Tensor temp = torch::full({B}, 0.8, f), topp = torch::full({B}, 0.9, f), topk = torch::full({B}, 50, f.dtype(torch::kInt));
    Tensor seed = torch::arange(B, f.dtype(torch::kLong)), counter = torch::zeros({B}, f.dtype(torch::kLong));
    double ours = time_ms([&] { cuda::sample(logits, temp, topk, topp, seed, counter); });
    double peer = time_ms([&] {
      auto z = logits.to(torch::kFloat) / 0.8;
      auto kth = std::get<0>(z.topk(50, -1)).narrow(1, 49, 1);
      z = z.masked_fill(z < kth, -INFINITY);
      auto [s, idx] = z.sort(-1, true);
      auto p = s.softmax(-1);
      auto drop = (p.cumsum(-1) - p) >= 0.9;
      s = s.masked_fill(drop, -INFINITY);
      torch::multinomial(s.softmax(-1), 1);
    });
    kernel_row("sample top-k 50 top-p 0.9", "B32 V128256 bf16", 1.0 * B * V * 2, ours, peer,
               "aten topk/sort/softmax/cumsum/multinomial (transformers' warpers)");
  }
  {  // KD chunk: read zs, zt, write grad
    const int64_t N = 2048, V = 128256;
    Tensor zs = torch::randn({N, V}, bf) * 3, zt = torch::randn({N, V}, bf) * 3, grad = torch::empty_like(zs);
    Tensor labels = torch::randint(0, V, {N}, torch::TensorOptions().device(kDev).dtype(torch::kLong));
    cuda::KdChunkOptions o;
    o.kd_weight = 0.5;
    o.grad_scale = 1.0 / N;
    double ours = time_ms([&] { cuda::kd_loss_chunk(zs, zt, labels, grad, o); }, 2, 10);
    c10::cuda::CUDACachingAllocator::emptyCache();
    double peer = time_ms([&] {
      torch::AutoGradMode g(true);
      auto s = zs.to(torch::kFloat).set_requires_grad(true);
      auto lq = torch::log_softmax(s, -1), lp = torch::log_softmax(zt.to(torch::kFloat), -1);
      auto kd = (lp.exp() * (lp - lq)).sum(-1).mean();
      auto ce = torch::nll_loss(lq, labels);
      (0.5 * kd + 0.5 * ce).backward();
    }, 2, 10);
    kernel_row("kd_loss fkl+ce fwd+bwd", "N2048 V128256 bf16", 3.0 * N * V * 2, ours, peer,
               "aten fp32 log_softmax/kl/nll + autograd");
  }
}

void decode() {
  const LlamaConfig cfg = llama_1b();
  Llama m = random_model(cfg, 1);
  const int64_t steps = 128;
  struct Variant {
    int64_t B; bool graphs, gemv; int loads; bool overlap; bool fuse_norm = false; bool fold = false;
    int64_t prompt = 128;
  };
  const CudaBackendOptions dflt;
  std::vector<Variant> variants = {{1, true, true, dflt.gemv_loads, dflt.overlap, dflt.fuse_norm, dflt.fold_combine}};
  for (int loads : {0, 2, 4, 8})  // the GEMV variants, with and without programmatic dependent launch
    for (bool overlap : {false, true})
      if (loads != dflt.gemv_loads || overlap != dflt.overlap) variants.push_back({1, true, true, loads, overlap});
  // the norm folded into the GEMVs (fuse_norm), at batch 1 and 8
  // and the attention merge folded into the split kernel (fold_combine), alone and with fuse_norm
  for (Variant v : {Variant{1, true, true, 2, true, true}, Variant{1, true, true, 0, true, true},
                    Variant{1, true, true, 2, true, false, true}, Variant{1, true, true, 2, true, true, true},
                    Variant{8, true, true, 2, true, false}, Variant{8, true, true, 2, true, true},
                    Variant{8, true, true, 2, true, true, true}})
    variants.push_back(v);
  // long context, where the folded merge's last block has the most splits to merge
  for (bool fold : {false, true}) variants.push_back(Variant{8, true, true, 2, true, false, fold, 4096});
  for (Variant v : {Variant{1, true, false, 0, false}, Variant{1, false, true, dflt.gemv_loads, dflt.overlap},
                    Variant{32, true, true, 0, false}, Variant{32, false, true, 0, false}})
    variants.push_back(v);
  for (Variant v : variants) {
    const int64_t prompt = v.prompt;
    CudaBackendOptions opt;
    opt.graphs = v.graphs;
    opt.gemv = v.gemv;
    opt.gemv_loads = v.loads;
    opt.overlap = v.overlap;
    opt.fuse_norm = v.fuse_norm;
    opt.fold_combine = v.fold;
    auto be = make_cuda_backend(m, opt);
    be->reserve(v.B, prompt + steps + 8);
    torch::manual_seed(2);
    std::vector<int64_t> slots, start;
    std::vector<int32_t> first;
    std::vector<DeviceSampling> smp(v.B);
    for (int64_t b = 0; b < v.B; ++b) {
      auto ids = torch::randint(0, cfg.vocab_size, {1, prompt}, torch::kLong);
      be->step(ids, {b}, {0});
      slots.push_back(b);
      start.push_back(prompt);
      first.push_back(static_cast<int32_t>(b + 1));
    }
    be->decode_loop(first, slots, start, 8, smp);  // warm-up (and graph capture)
    std::vector<double> ts;
    for (int r = 0; r < 3; ++r) {
      torch::cuda::synchronize();
      auto t0 = std::chrono::steady_clock::now();
      be->decode_loop(first, slots, start, steps, smp);
      ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ts.begin(), ts.end());
    const double t = ts[1], step_s = t / steps;
    const double kv_bytes = double(v.B) * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * 2 *
                            (prompt + steps / 2.0);
    const double bytes = double(be->weight_bytes_per_step()) + kv_bytes;
    emit({{"bench", "decode"}, {"model", "llama-3.2-1B shape, random bf16"}, {"batch", v.B}, {"graphs", v.graphs},
          {"gemv", v.gemv}, {"gemv_loads", v.loads}, {"overlap", v.overlap}, {"fuse_norm", v.fuse_norm}, {"fold_combine", v.fold}, {"prompt_len", prompt}, {"new_tokens", steps}, {"decode_tok_s", v.B * steps / t},
          {"ms_per_step", step_s * 1e3}, {"bytes_per_step", bytes}, {"achieved_GBps", bytes / step_s / 1e9},
          {"frac_of_copy_bw", bytes / step_s / 1e9 / g_copy_gbs}});
  }
}

// Two batch-1 decode steps without graphs, between cudaProfilerStart and cudaProfilerStop: what a
// profiler started with --profile-from-start off sees is one step's kernels, twice.
void decode_profile() {
  const LlamaConfig cfg = llama_1b();
  Llama m = random_model(cfg, 1);
  CudaBackendOptions opt;
  opt.graphs = false;
  auto be = make_cuda_backend(m, opt);
  be->reserve(1, 512);
  torch::manual_seed(2);
  be->step(torch::randint(0, cfg.vocab_size, {1, 128}, torch::kLong), {0}, {0});
  std::vector<DeviceSampling> smp(1);
  be->decode_loop({1}, {0}, {128}, 4, smp);  // warm-up
  torch::cuda::synchronize();
  cudaProfilerStart();
  be->decode_loop({1}, {0}, {132}, 2, smp);
  torch::cuda::synchronize();
  cudaProfilerStop();
  emit({{"bench", "decode-profile"}, {"steps", 2}, {"model", "llama-3.2-1B shape, random bf16"},
        {"weight_bytes_per_step", be->weight_bytes_per_step()}});
}

double gib(int64_t b) { return b / double(1ll << 30); }

void distill() {
  namespace A = c10::cuda::CUDACachingAllocator;
  const LlamaConfig tc = llama_8b(), sc = llama_1b();
  Llama teacher = random_model(tc, 3);
  Llama student = random_model(sc, 4);
  for (auto& p : student->parameters()) p.requires_grad_(true);
  const int64_t T = 2048;
  torch::manual_seed(5);
  auto lo = torch::TensorOptions().device(kDev).dtype(torch::kLong);
  Tensor ids = torch::randint(0, sc.vocab_size, {1, T}, lo);
  Tensor labels = torch::randint(0, sc.vocab_size, {T}, lo);
  for (int64_t chunk : {1024, 2048}) {
    KdLossOptions o;
    o.kind = "fkl";
    o.kd_weight = 0.5;
    o.temperature = 1.0;
    o.chunk_tokens = chunk;
    double loss_extra = 0, before_loss = 0, loss_val = 0;
    auto step = [&](bool measure) {
      student->zero_grad();
      Tensor th;
      {
        torch::NoGradGuard ng;
        ForwardOptions fo;
        fo.compute_logits = false;
        th = teacher->forward(ids, fo).last_hidden.view({T, tc.hidden_size});
      }
      ForwardOptions fo;
      fo.compute_logits = false;
      Tensor sh = student->forward(ids, fo).last_hidden.view({T, sc.hidden_size});
      Tensor shd = sh.detach().requires_grad_(true);
      torch::cuda::synchronize();
      const int64_t before = A::getDeviceStats(0).allocated_bytes[0].current;
      if (measure) A::resetPeakStats(0);
      auto parts = fused_kd_loss(shd, student->output_weight(), labels, {OnlineTeacher{th, teacher->output_weight(), 1.0}}, {}, o);
      parts.loss.backward();
      if (measure) {
        torch::cuda::synchronize();
        loss_extra = gib(A::getDeviceStats(0).allocated_bytes[0].peak - before);
        before_loss = gib(before);
        loss_val = parts.loss.item<double>();
      }
      sh.backward(shd.grad());
    };
    step(false);
    step(false);
    std::vector<double> ms;
    for (int r = 0; r < 5; ++r) {
      torch::cuda::synchronize();
      auto t0 = std::chrono::steady_clock::now();
      step(false);
      torch::cuda::synchronize();
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    torch::cuda::synchronize();
    A::resetPeakStats(0);
    const int64_t base = A::getDeviceStats(0).allocated_bytes[0].current;
    step(false);
    torch::cuda::synchronize();
    const double peak = gib(A::getDeviceStats(0).allocated_bytes[0].peak);
    step(true);
    const double t = ms[2] * 1e-3;
    const double flops = (6.0 * sc.num_parameters() + 2.0 * tc.num_parameters()) * T;
    emit({{"bench", "distill_step"}, {"ours", "bonsai LibTorch Llama + fused chunked KD kernel"}, {"seq", T}, {"batch", 1},
          {"chunk_tokens", chunk}, {"step_ms", ms[2]}, {"tokens_per_s", T / t}, {"mfu", flops / t / 989e12},
          {"mfu_vs_measured_mm", flops / t / (g_mm_tflops * 1e12)}, {"peak_mem_gib", peak},
          {"weights_and_state_gib", gib(base)}, {"mem_before_loss_gib", before_loss}, {"loss_peak_extra_gib", loss_extra},
          {"loss", loss_val}, {"step", "forward+backward (no optimizer)"}, {"kd_weight", 0.5}, {"loss_kind", "fkl"}});
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (!cuda::available()) {
    std::fprintf(stderr, "bench_gpu: no CUDA device (or a build without CUDA)\n");
    return 2;
  }
  std::set<std::string> want;
  for (int i = 1; i < argc; ++i) want.insert(argv[i]);
  auto on = [&](const char* s) { return want.empty() || want.count(s); };
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  g_gpu = prop.name;
  try {
    if (want.count("decode-profile")) {
      decode_profile();
      return 0;
    }
    ceilings();  // every other figure is read against these
    if (on("kernels")) kernels();
    if (on("decode")) decode();
    if (on("distill")) distill();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpu: %s\n", e.what());
    return 1;
  }
  return 0;
}
