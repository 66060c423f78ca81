// LibTorch adapters over runtime/kernels (see cuda_ops.h). Compiled in every build: without
// BONSAI_CUDA the ops throw a clear error, so callers need no #ifdefs.
#include "runtime/cuda_ops.h"

#include "bonsai_build_config.h"
#include "core/error.h"

#ifdef BONSAI_CUDA
#include <ATen/MemoryOverlap.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "runtime/kernels/kernels.h"
#endif

namespace bonsai::cuda {

bool built_with_cuda() {
#ifdef BONSAI_CUDA
  return true;
#else
  return false;
#endif
}

bool available() { return built_with_cuda() && torch::cuda::is_available(); }

#ifndef BONSAI_CUDA
namespace {
[[noreturn]] void no_cuda(const char* op) {
  throw Error(std::string("cuda ") + op + ": this bonsai was built without CUDA",
              "rebuild with nvcc on PATH (cmake -DBONSAI_CUDA=ON)");
}
}  // namespace
torch::Tensor add_rmsnorm(torch::Tensor&, const std::optional<torch::Tensor>&, const torch::Tensor&, double) { no_cuda("add_rmsnorm"); }
torch::Tensor rope_qkv_to_cache(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                torch::Tensor&, torch::Tensor&, int64_t, int64_t, int64_t) { no_cuda("rope_qkv_to_cache"); }
torch::Tensor swiglu(const torch::Tensor&) { no_cuda("swiglu"); }
torch::Tensor gemv(const torch::Tensor&, const torch::Tensor&, int, bool) { no_cuda("gemv"); }
torch::Tensor gemv_rmsnorm(const torch::Tensor&, const torch::Tensor&, double, int, bool) { no_cuda("gemv_rmsnorm"); }
void gemv_accumulate(torch::Tensor&, const torch::Tensor&, const torch::Tensor&, int, bool) { no_cuda("gemv_accumulate"); }
torch::Tensor decode_attention(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                               const torch::Tensor&, int64_t, const torch::Tensor&, const torch::Tensor&) {
  no_cuda("decode_attention");
}
int64_t default_attention_splits(int64_t, int64_t, int64_t) { return 1; }
torch::Tensor sample(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                     const torch::Tensor&, torch::Tensor&) { no_cuda("sample"); }
std::pair<torch::Tensor, torch::Tensor> kd_loss_chunk(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                                      torch::Tensor&, const KdChunkOptions&) { no_cuda("kd_loss_chunk"); }
#else
namespace {

namespace K = bonsai::kernels;

std::string shape_of(const torch::Tensor& t) {
  std::string s = "(";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? "," : "") + std::to_string(t.size(i));
  return s + ")";
}

K::DType kdtype(const torch::Tensor& t, const char* op, const char* name) {
  switch (t.scalar_type()) {
    case torch::kFloat: return K::DType::F32;
    case torch::kHalf: return K::DType::F16;
    case torch::kBFloat16: return K::DType::BF16;
    default:
      throw Error(std::string("cuda ") + op + ": " + name + " has dtype " + std::string(c10::toString(t.scalar_type())) +
                  ", expected float32, float16 or bfloat16");
  }
}

void need_cuda(const torch::Tensor& t, const char* op, const char* name) {
  if (!t.defined() || !t.is_cuda())
    throw Error(std::string("cuda ") + op + ": " + name + " must be a CUDA tensor", "move it with .to(torch::kCUDA)");
}

void need_dim(const torch::Tensor& t, int64_t d, const char* op, const char* name) {
  if (t.dim() != d)
    throw Error(std::string("cuda ") + op + ": " + name + " has shape " + shape_of(t) + ", expected " +
                std::to_string(d) + " dimensions");
}

void same_dtype(const torch::Tensor& a, const torch::Tensor& b, const char* op, const char* name) {
  if (a.scalar_type() != b.scalar_type())
    throw Error(std::string("cuda ") + op + ": " + name + " has dtype " + std::string(c10::toString(b.scalar_type())) +
                ", expected " + std::string(c10::toString(a.scalar_type())) + " like the other inputs");
}

// Rows contiguous (last stride 1, 16-byte aligned row starts are checked by the kernels).
torch::Tensor rows_contiguous(const torch::Tensor& t) {
  return t.dim() >= 1 && t.stride(-1) == 1 ? t : t.contiguous();
}

torch::Tensor int32_on(const torch::Tensor& t, const char* op, const char* name) {
  need_cuda(t, op, name);
  return t.scalar_type() == torch::kInt ? t.contiguous() : t.to(torch::kInt).contiguous();
}

void check(cudaError_t e, const char* op) {
  if (e != cudaSuccess)
    throw Error(std::string("cuda ") + op + ": " + cudaGetErrorString(e),
                e == cudaErrorInvalidValue ? "the kernel refused the arguments (sizes, alignment or dtype)" : "");
}

cudaStream_t stream() { return at::cuda::getCurrentCUDAStream().stream(); }

}  // namespace

torch::Tensor add_rmsnorm(torch::Tensor& x, const std::optional<torch::Tensor>& residual, const torch::Tensor& weight,
                          double eps) {
  const char* op = "add_rmsnorm";
  need_cuda(x, op, "x");
  need_cuda(weight, op, "weight");
  const int64_t C = x.size(-1);
  if (weight.dim() != 1 || weight.size(0) != C)
    throw Error(std::string("cuda add_rmsnorm: weight has shape ") + shape_of(weight) + ", expected (" + std::to_string(C) + ")");
  same_dtype(x, weight, op, "weight");
  c10::cuda::CUDAGuard guard(x.device());
  if (!x.is_contiguous()) throw Error("cuda add_rmsnorm: x must be contiguous (it is updated in place)");
  torch::Tensor x2 = x.view({-1, C});
  torch::Tensor r;
  if (residual) {
    need_cuda(*residual, op, "residual");
    same_dtype(x, *residual, op, "residual");
    if (residual->sizes() != x.sizes())
      throw Error("cuda add_rmsnorm: residual " + shape_of(*residual) + " does not match x " + shape_of(x));
    r = residual->contiguous().view({-1, C});
  }
  torch::Tensor w = weight.contiguous();
  torch::Tensor out = torch::empty_like(x2);
  check(K::add_rmsnorm(kdtype(x, op, "x"), x2.data_ptr(), C, r.defined() ? r.data_ptr() : nullptr, C, w.data_ptr(),
                       out.data_ptr(), C, x2.size(0), C, static_cast<float>(eps), stream()),
        op);
  return out.view(x.sizes());
}

torch::Tensor rope_qkv_to_cache(const torch::Tensor& qkv_in, const torch::Tensor& pos, const torch::Tensor& slot,
                                const torch::Tensor& inv_freq, torch::Tensor& k_cache, torch::Tensor& v_cache,
                                int64_t H, int64_t Hkv, int64_t D) {
  const char* op = "rope_qkv_to_cache";
  need_cuda(qkv_in, op, "qkv");
  need_dim(qkv_in, 2, op, "qkv");
  if (qkv_in.size(1) != (H + 2 * Hkv) * D)
    throw Error("cuda rope_qkv_to_cache: qkv has shape " + shape_of(qkv_in) + ", expected (N, " +
                std::to_string((H + 2 * Hkv) * D) + ") = (N, (H + 2*Hkv) * D)");
  need_dim(k_cache, 4, op, "k_cache");
  if (k_cache.sizes() != v_cache.sizes() || k_cache.size(1) != Hkv || k_cache.size(3) != D || !k_cache.is_contiguous() ||
      !v_cache.is_contiguous())
    throw Error("cuda rope_qkv_to_cache: caches " + shape_of(k_cache) + "/" + shape_of(v_cache) +
                " must be contiguous (slots, Hkv=" + std::to_string(Hkv) + ", max_seq, D=" + std::to_string(D) + ")");
  same_dtype(qkv_in, k_cache, op, "k_cache");
  same_dtype(qkv_in, v_cache, op, "v_cache");
  if (inv_freq.scalar_type() != torch::kFloat || inv_freq.numel() != D / 2)
    throw Error("cuda rope_qkv_to_cache: inv_freq must be float32 (D/2,) = (" + std::to_string(D / 2) + ")");
  const int64_t N = qkv_in.size(0);
  if (pos.numel() != N || slot.numel() != N)
    throw Error("cuda rope_qkv_to_cache: pos and slot must have N = " + std::to_string(N) + " entries");
  c10::cuda::CUDAGuard guard(qkv_in.device());
  torch::Tensor qkv = rows_contiguous(qkv_in);
  torch::Tensor p = int32_on(pos, op, "pos"), s = int32_on(slot, op, "slot");
  torch::Tensor f = inv_freq.to(qkv.device()).contiguous();
  torch::Tensor q = torch::empty({N, H, D}, qkv.options());
  check(K::rope_qkv_to_cache(kdtype(qkv, op, "qkv"), qkv.data_ptr(), qkv.stride(0), p.data_ptr<int32_t>(),
                             s.data_ptr<int32_t>(), f.data_ptr<float>(), q.data_ptr(), k_cache.data_ptr(),
                             v_cache.data_ptr(), N, H, Hkv, D, k_cache.size(2), stream()),
        op);
  return q;
}

torch::Tensor swiglu(const torch::Tensor& gate_up) {
  const char* op = "swiglu";
  need_cuda(gate_up, op, "gate_up");
  need_dim(gate_up, 2, op, "gate_up");
  if (gate_up.size(1) % 2 != 0) throw Error("cuda swiglu: gate_up has shape " + shape_of(gate_up) + ", expected (N, 2*I)");
  c10::cuda::CUDAGuard guard(gate_up.device());
  torch::Tensor in = rows_contiguous(gate_up);
  const int64_t N = in.size(0), I = in.size(1) / 2;
  torch::Tensor out = torch::empty({N, I}, in.options());
  check(K::swiglu(kdtype(in, op, "gate_up"), in.data_ptr(), in.stride(0), out.data_ptr(), I, N, I, stream()), op);
  return out;
}

namespace {
// The checks every GEMV entry shares; returns (W, x) contiguous. `fused`: loads 0 or 2 only.
std::pair<torch::Tensor, torch::Tensor> gemv_inputs(const char* op, const torch::Tensor& W_in, const torch::Tensor& x_in,
                                                    int loads, bool fused) {
  if (loads != 0 && loads != 2 && (fused || (loads != 4 && loads != 8)))
    throw Error(std::string("cuda ") + op + ": loads=" + std::to_string(loads) + " is not one of " +
                (fused ? "0, 2" : "0, 2, 4, 8"));
  need_cuda(W_in, op, "W");
  need_cuda(x_in, op, "x");
  need_dim(W_in, 2, op, "W");
  need_dim(x_in, 2, op, "x");
  same_dtype(W_in, x_in, op, "x");
  if (x_in.device() != W_in.device())
    throw Error(std::string("cuda ") + op + ": x is on " + x_in.device().str() + ", W on " + W_in.device().str());
  if (x_in.size(1) != W_in.size(1) || x_in.size(0) < 1 || x_in.size(0) > 8)
    throw Error(std::string("cuda ") + op + ": x " + shape_of(x_in) + " and W " + shape_of(W_in) +
                " do not fit (B<=8, K matching)");
  return {W_in.contiguous(), x_in.contiguous()};
}

// y (B, N) = [y +] x @ W^T through kernels::gemv. W is read before the wait: a W that contiguous()
// just copied (W_in was not contiguous) must not be read before the copy ends, so no overlap then.
void run_gemv(const char* op, const torch::Tensor& W_in, const torch::Tensor& W, const torch::Tensor& x,
              torch::Tensor& y, int loads, bool overlap, const K::GemvFusion& f = {}) {
  c10::cuda::CUDAGuard guard(W.device());
  check(K::gemv(kdtype(W, op, "W"), W.data_ptr(), x.data_ptr(), x.stride(0), y.data_ptr(), y.stride(0), x.size(0),
                W.size(0), W.size(1), stream(), K::GemvOptions{loads, overlap && W_in.is_contiguous()}, f),
        op);
}
}  // namespace

torch::Tensor gemv(const torch::Tensor& W_in, const torch::Tensor& x_in, int loads, bool overlap) {
  auto [W, x] = gemv_inputs("gemv", W_in, x_in, loads, false);
  torch::Tensor y = torch::empty({x.size(0), W.size(0)}, x.options());
  run_gemv("gemv", W_in, W, x, y, loads, overlap);
  return y;
}

torch::Tensor gemv_rmsnorm(const torch::Tensor& W_in, const torch::Tensor& x_in, double eps, int loads, bool overlap) {
  const char* op = "gemv_rmsnorm";
  auto [W, x] = gemv_inputs(op, W_in, x_in, loads, true);
  if (!(eps >= 0)) throw Error("cuda gemv_rmsnorm: eps must be >= 0, got " + std::to_string(eps));
  torch::Tensor y = torch::empty({x.size(0), W.size(0)}, x.options());
  K::GemvFusion f;
  f.rms_norm = true;
  f.eps = static_cast<float>(eps);
  run_gemv(op, W_in, W, x, y, loads, overlap, f);
  return y;
}

void gemv_accumulate(torch::Tensor& y, const torch::Tensor& W_in, const torch::Tensor& x_in, int loads, bool overlap) {
  const char* op = "gemv_accumulate";
  need_cuda(y, op, "y");
  // before contiguous() could copy x: y is written while x is read
  if (x_in.defined() && at::get_overlap_status(y, x_in) != at::MemOverlapStatus::No)
    throw Error("cuda gemv_accumulate: y and x overlap in memory (y is updated while x is read)", "pass a copy of x");
  auto [W, x] = gemv_inputs(op, W_in, x_in, loads, true);
  same_dtype(W, y, op, "y");
  if (y.dim() != 2 || y.size(0) != x.size(0) || y.size(1) != W.size(0) || y.stride(1) != 1)
    throw Error("cuda gemv_accumulate: y has shape " + shape_of(y) + ", expected (" + std::to_string(x.size(0)) + ", " +
                std::to_string(W.size(0)) + ") with contiguous rows (it is updated in place)");
  if (y.device() != W.device())
    throw Error("cuda gemv_accumulate: y is on " + y.device().str() + ", W on " + W.device().str());
  K::GemvFusion f;
  f.accumulate = true;
  run_gemv(op, W_in, W, x, y, loads, overlap, f);
}

int64_t default_attention_splits(int64_t B, int64_t Hkv, int64_t max_seq) {
  // About 8 blocks per multiprocessor over B * Hkv * splits, at most 64 splits, and no more than a
  // split per 16 positions of the cache. The kernel sizes each split from the current length, so
  // the splits a short context does not need exit at once.
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;  // cached by ATen per device
  const int64_t rows = std::max<int64_t>(1, B * Hkv);
  const int64_t want = (8 * sms + rows - 1) / rows;
  return std::clamp<int64_t>(want, 1, std::min<int64_t>(64, std::max<int64_t>(1, (max_seq + 15) / 16)));
}

torch::Tensor decode_attention(const torch::Tensor& q_in, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                               const torch::Tensor& slot, const torch::Tensor& len, int64_t num_splits,
                               const torch::Tensor& counters, const torch::Tensor& out_in) {
  const char* op = "decode_attention";
  need_cuda(q_in, op, "q");
  need_dim(q_in, 3, op, "q");
  need_dim(k_cache, 4, op, "k_cache");
  same_dtype(q_in, k_cache, op, "k_cache");
  same_dtype(q_in, v_cache, op, "v_cache");
  const int64_t B = q_in.size(0), H = q_in.size(1), D = q_in.size(2), Hkv = k_cache.size(1), S = k_cache.size(2);
  if (k_cache.size(3) != D || v_cache.sizes() != k_cache.sizes() || !k_cache.is_contiguous() || !v_cache.is_contiguous())
    throw Error("cuda decode_attention: caches " + shape_of(k_cache) + " must be contiguous (slots, Hkv, max_seq, D=" +
                std::to_string(D) + ")");
  if (H % Hkv != 0 || H / Hkv > 8 || (D != 64 && D != 128))
    throw Error("cuda decode_attention: H=" + std::to_string(H) + ", Hkv=" + std::to_string(Hkv) + ", D=" +
                    std::to_string(D) + " is not supported",
                "the kernel takes D in {64, 128} and up to 8 query heads per kv head; use the LibTorch backend");
  if (slot.numel() != B || len.numel() != B) throw Error("cuda decode_attention: slot and len must have B entries");
  c10::cuda::CUDAGuard guard(q_in.device());
  torch::Tensor q = q_in.contiguous();
  if (num_splits <= 0) num_splits = default_attention_splits(B, Hkv, S);
  if (num_splits > 1024)
    throw Error("cuda decode_attention: num_splits=" + std::to_string(num_splits) + " is over 1024", "pass 0 to choose from the batch");
  torch::Tensor s = int32_on(slot, op, "slot"), l = int32_on(len, op, "len");
  if (counters.defined()) {
    need_cuda(counters, op, "counters");
    if (counters.scalar_type() != torch::kInt || !counters.is_contiguous() || counters.numel() < B * Hkv ||
        counters.device() != q_in.device())
      throw Error("cuda decode_attention: counters must be a contiguous int32 tensor of at least B*Hkv = " +
                      std::to_string(B * Hkv) + " zeros on " + q_in.device().str() + ", got " +
                      std::string(c10::toString(counters.scalar_type())) + " " + shape_of(counters),
                  "allocate torch::zeros({B * Hkv}, kInt) once and pass it to every call");
  }
  torch::Tensor ws = torch::empty({K::attention_workspace_bytes(B, H, D, num_splits)}, q.options().dtype(torch::kByte));
  torch::Tensor out = out_in.defined() ? out_in : torch::empty_like(q);
  if (out_in.defined() && (out.sizes() != q.sizes() || out.scalar_type() != q.scalar_type() || !out.is_contiguous() ||
                           out.device() != q.device()))
    throw Error("cuda decode_attention: out must be a contiguous " + shape_of(q) + " " +
                std::string(c10::toString(q.scalar_type())) + " tensor on " + q.device().str() + ", got " +
                std::string(c10::toString(out.scalar_type())) + " " + shape_of(out));
  check(K::decode_attention(kdtype(q, op, "q"), q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), s.data_ptr<int32_t>(),
                            l.data_ptr<int32_t>(), out.data_ptr(), ws.data_ptr(), B, H, Hkv, D, S, num_splits,
                            static_cast<float>(1.0 / std::sqrt(static_cast<double>(D))), stream(),
                            counters.defined() ? reinterpret_cast<uint32_t*>(counters.data_ptr<int32_t>()) : nullptr),
        op);
  return out;
}

torch::Tensor sample(const torch::Tensor& logits_in, const torch::Tensor& temperature, const torch::Tensor& top_k,
                     const torch::Tensor& top_p, const torch::Tensor& seed, torch::Tensor& counter) {
  const char* op = "sample";
  need_cuda(logits_in, op, "logits");
  need_dim(logits_in, 2, op, "logits");
  const int64_t B = logits_in.size(0);
  auto want = [&](const torch::Tensor& t, torch::ScalarType st, const char* name) {
    need_cuda(t, op, name);
    if (t.scalar_type() != st || t.numel() != B || !t.is_contiguous())
      throw Error(std::string("cuda sample: ") + name + " must be a contiguous (" + std::to_string(B) + ",) " +
                  std::string(c10::toString(st)) + " tensor");
  };
  want(temperature, torch::kFloat, "temperature");
  want(top_k, torch::kInt, "top_k");
  want(top_p, torch::kFloat, "top_p");
  want(seed, torch::kLong, "seed");
  want(counter, torch::kLong, "counter");
  c10::cuda::CUDAGuard guard(logits_in.device());
  torch::Tensor logits = rows_contiguous(logits_in);
  torch::Tensor out = torch::empty({B}, logits.options().dtype(torch::kInt));
  check(K::sample(kdtype(logits, op, "logits"), logits.data_ptr(), logits.stride(0), B, logits.size(1),
                  temperature.data_ptr<float>(), top_k.data_ptr<int32_t>(), top_p.data_ptr<float>(),
                  reinterpret_cast<const uint64_t*>(seed.data_ptr<int64_t>()),
                  reinterpret_cast<uint64_t*>(counter.data_ptr<int64_t>()), out.data_ptr<int32_t>(), stream()),
        op);
  return out;
}

std::pair<torch::Tensor, torch::Tensor> kd_loss_chunk(const torch::Tensor& zs_in, const torch::Tensor& zt_in,
                                                      const torch::Tensor& labels, torch::Tensor& grad,
                                                      const KdChunkOptions& o) {
  const char* op = "kd_loss_chunk";
  need_cuda(zs_in, op, "student logits");
  need_dim(zs_in, 2, op, "student logits");
  const int64_t N = zs_in.size(0), V = zs_in.size(1);
  if (zt_in.defined()) {
    need_cuda(zt_in, op, "teacher logits");
    need_dim(zt_in, 2, op, "teacher logits");
    same_dtype(zs_in, zt_in, op, "teacher logits");
    if (zt_in.size(0) != N)
      throw Error("cuda kd_loss_chunk: teacher logits " + shape_of(zt_in) + " and student logits " + shape_of(zs_in) +
                  " have different row counts");
  }
  if (labels.numel() != N || labels.scalar_type() != torch::kLong)
    throw Error("cuda kd_loss_chunk: labels must be (N,) int64 with N = " + std::to_string(N));
  if (grad.sizes() != zs_in.sizes() || grad.scalar_type() != zs_in.scalar_type() || grad.stride(-1) != 1)
    throw Error("cuda kd_loss_chunk: grad must have the student logits' shape and dtype, rows contiguous");
  c10::cuda::CUDAGuard guard(zs_in.device());
  torch::Tensor zs = rows_contiguous(zs_in);
  torch::Tensor zt = zt_in.defined() ? rows_contiguous(zt_in) : zt_in;
  torch::Tensor lab = labels.contiguous();
  auto f32 = zs.options().dtype(torch::kFloat);
  torch::Tensor kd = torch::empty({N}, f32), ce = torch::empty({N}, f32);
  K::KdParams p;
  p.kind = o.kind;
  p.tau = static_cast<float>(o.tau);
  p.beta = static_cast<float>(o.beta);
  p.kd_weight = static_cast<float>(o.kd_weight);
  p.w_kd = static_cast<float>(o.w_kd);
  p.grad_scale = static_cast<float>(o.grad_scale);
  p.ignore_index = o.ignore_index;
  check(K::kd_loss_fwd_bwd(kdtype(zs, op, "student logits"), zs.data_ptr(), zs.stride(0),
                           zt.defined() ? zt.data_ptr() : nullptr, zt.defined() ? zt.stride(0) : 0,
                           lab.data_ptr<int64_t>(), grad.data_ptr(), grad.stride(0), kd.data_ptr<float>(),
                           ce.data_ptr<float>(), N, V, zt.defined() ? zt.size(1) : 0, p, stream()),
        op);
  return {kd, ce};
}
#endif

}  // namespace bonsai::cuda
