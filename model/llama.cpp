#include "model/llama.h"

#include <cmath>

#include "core/error.h"
#include "core/strings.h"
#include "model/tensor_names.h"

namespace bonsai {

namespace F = torch::nn::functional;

// Parameters start empty (no memory): a checkpoint load or init_random gives them their data and
// shape (from the tensor table), so building an 8B-shaped module never allocates 32 GB of zeros.
// (A meta-device placeholder would be nicer, but set_data cannot move a meta tensor to CPU.)
WeightImpl::WeightImpl(std::vector<int64_t> shape) : shape(std::move(shape)) {
  weight = register_parameter("weight", torch::empty({0}));
}

torch::Tensor rope_inv_freq(const LlamaConfig& c) {
  // Same float32 arithmetic as transformers' _compute_default_rope_parameters / llama3 variant.
  const int64_t D = c.head_dim;
  auto exponent = torch::arange(0, D, 2, torch::kInt64).to(torch::kFloat) / static_cast<double>(D);
  torch::Tensor inv_freq = 1.0 / torch::pow(c.rope_theta, exponent);
  if (c.rope_scaling.type != "llama3") return inv_freq;
  const auto& s = c.rope_scaling;
  const double old_ctx = static_cast<double>(s.original_max_position_embeddings);
  const double low_freq_wavelen = old_ctx / s.low_freq_factor;
  const double high_freq_wavelen = old_ctx / s.high_freq_factor;
  torch::Tensor wavelen = 2 * M_PI / inv_freq;
  // Long wavelengths (low frequencies) are divided by `factor`; short ones kept; in between blended.
  torch::Tensor scaled = torch::where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq);
  torch::Tensor smooth = (old_ctx / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
  torch::Tensor smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
  torch::Tensor is_medium = (wavelen >= high_freq_wavelen).logical_and(wavelen <= low_freq_wavelen);
  return torch::where(is_medium, smoothed, scaled);
}

namespace {

// Training-time memory (per token and layer, fp32 activations): composed of ATen ops, RMSNorm keeps
// its input, the normalized copy and the output alive for backward, and SwiGLU keeps gate, silu(gate)
// and up. These two functions keep only what their backward needs (input + 1/rms; gate + up) and
// recompute the rest: 2 of the layer's ~12.5k saved floats per token become ~9.8k. Forward does the
// very same ops as the composed form, so outputs are bit-identical; backward math is in fp32 (fp64
// for fp64 inputs: the finite-difference tests use that).
torch::ScalarType math_type(const torch::Tensor& t) { return t.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat; }

torch::Tensor rms_norm_forward(const torch::Tensor& x, const torch::Tensor& weight, double eps, torch::Tensor* rstd_out) {
  torch::Tensor h = x.to(math_type(x));  // fp32 (fp64 inputs stay fp64)
  torch::Tensor rstd = torch::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps);
  if (rstd_out != nullptr) *rstd_out = rstd;
  return weight * (h * rstd).to(x.scalar_type());
}

class RmsNormFn : public torch::autograd::Function<RmsNormFn> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, torch::Tensor weight, double eps) {
    torch::Tensor rstd;
    torch::Tensor y = rms_norm_forward(x, weight, eps, &rstd);
    ctx->save_for_backward({x, weight, rstd});
    return y;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list g) {
    auto saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &w = saved[1], &rstd = saved[2];
    const auto mt = math_type(x);
    torch::Tensor n = x.to(mt) * rstd.to(mt);                  // normalized input, recomputed
    torch::Tensor gy = g[0].to(mt);
    torch::Tensor gw;
    if (w.requires_grad()) {  // y = w * cast(n): the cast is rounding, its gradient the identity
      std::vector<int64_t> dims;
      for (int64_t d = 0; d + 1 < gy.dim(); ++d) dims.push_back(d);
      gw = (gy * n.to(x.scalar_type()).to(mt)).sum(dims).to(w.scalar_type());
    }
    torch::Tensor gn = gy * w.to(mt);
    torch::Tensor gx = (rstd.to(mt) * (gn - n * (gn * n).mean(-1, /*keepdim=*/true))).to(x.scalar_type());
    return {gx, gw, torch::Tensor()};
  }
};

class SwiGluFn : public torch::autograd::Function<SwiGluFn> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor gate, torch::Tensor up) {
    ctx->save_for_backward({gate, up});
    return F::silu(gate) * up;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list g) {
    auto saved = ctx->get_saved_variables();
    const torch::Tensor &gate = saved[0], &up = saved[1];
    const auto mt = math_type(gate);
    torch::Tensor a = gate.to(mt), s = torch::sigmoid(a), gy = g[0].to(mt);
    torch::Tensor g_up = (gy * a * s).to(up.scalar_type());
    // d silu(a)/da = s * (1 + a * (1 - s))
    torch::Tensor g_gate = (gy * up.to(mt) * s * (1 + a * (1 - s))).to(gate.scalar_type());
    return {g_gate, g_up};
  }
};

bool needs_graph(const torch::Tensor& a, const torch::Tensor& b) {
  return torch::GradMode::is_enabled() && (a.requires_grad() || b.requires_grad());
}

}  // namespace

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  if (needs_graph(x, weight)) return RmsNormFn::apply(x, weight, eps);
  return rms_norm_forward(x, weight, eps, nullptr);
}

torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up) {
  if (needs_graph(gate, up)) return SwiGluFn::apply(gate, up);
  return F::silu(gate) * up;
}

torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  torch::Tensor x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  return torch::cat({x1 * cos - x2 * sin, x2 * cos + x1 * sin}, -1);
}

namespace {

inline void trace(const ForwardOptions& opt, int64_t layer, const char* name, const torch::Tensor& t) {
  if (opt.trace != nullptr) (*opt.trace)(layer, name, t);
}

}  // namespace

LlamaImpl::LlamaImpl(const LlamaConfig& cfg) : cfg_(cfg) {
  cfg_.validate("LlamaConfig");
  const int64_t C = cfg.hidden_size, I = cfg.intermediate_size, D = cfg.head_dim;
  const int64_t H = cfg.num_attention_heads, Hkv = cfg.num_key_value_heads;
  auto model = register_module("model", std::make_shared<torch::nn::Module>());
  embed_ = model->register_module("embed_tokens", std::make_shared<WeightImpl>(std::vector<int64_t>{cfg.vocab_size, C}));
  auto layers = model->register_module("layers", std::make_shared<torch::nn::Module>());
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    auto blk = layers->register_module(std::to_string(i), std::make_shared<torch::nn::Module>());
    auto attn = blk->register_module("self_attn", std::make_shared<torch::nn::Module>());
    auto mlp = blk->register_module("mlp", std::make_shared<torch::nn::Module>());
    auto w = [](const std::shared_ptr<torch::nn::Module>& parent, const char* name, std::vector<int64_t> shape) {
      return parent->register_module(name, std::make_shared<WeightImpl>(std::move(shape)));
    };
    LlamaLayer l;
    l.attn_norm = w(blk, "input_layernorm", {C});
    l.q = w(attn, "q_proj", {H * D, C});
    l.k = w(attn, "k_proj", {Hkv * D, C});
    l.v = w(attn, "v_proj", {Hkv * D, C});
    l.o = w(attn, "o_proj", {C, H * D});
    l.ffn_norm = w(blk, "post_attention_layernorm", {C});
    l.gate = w(mlp, "gate_proj", {I, C});
    l.up = w(mlp, "up_proj", {I, C});
    l.down = w(mlp, "down_proj", {C, I});
    layers_.push_back(l);
  }
  final_norm_ = model->register_module("norm", std::make_shared<WeightImpl>(std::vector<int64_t>{C}));
  if (!cfg.tie_word_embeddings) {
    lm_head_ = register_module("lm_head", std::make_shared<WeightImpl>(std::vector<int64_t>{cfg.vocab_size, C}));
  }
  inv_freq_ = rope_inv_freq(cfg_);
}

torch::Tensor LlamaImpl::output_weight() const { return lm_head_ ? lm_head_->weight : embed_->weight; }

std::pair<torch::Tensor, torch::Tensor> LlamaImpl::rope_cos_sin(int64_t start, int64_t T, torch::Device dev) const {
  auto pos = torch::arange(start, start + T, torch::TensorOptions().dtype(torch::kFloat).device(dev));
  torch::Tensor freqs = pos.unsqueeze(1) * inv_freq_.to(dev).unsqueeze(0);  // (T, D/2)
  return {freqs.cos(), freqs.sin()};
}

torch::Tensor LlamaImpl::block(const LlamaLayer& l, int64_t i, torch::Tensor x, const torch::Tensor& cos,
                               const torch::Tensor& sin, const ForwardOptions& opt) {
  const int64_t B = x.size(0), T = x.size(1), D = cfg_.head_dim;
  const int64_t H = cfg_.num_attention_heads, Hkv = cfg_.num_key_value_heads;
  // --- attention: x (B,T,C) -> q (B,H,T,D), k/v (B,Hkv,T,D)
  torch::Tensor h = rms_norm(x, l.attn_norm->weight, cfg_.rms_norm_eps);
  trace(opt, i, "attn_norm", h);
  torch::Tensor q = F::linear(h, l.q->weight).view({B, T, H, D}).transpose(1, 2);
  torch::Tensor k = F::linear(h, l.k->weight).view({B, T, Hkv, D}).transpose(1, 2);
  torch::Tensor v = F::linear(h, l.v->weight).view({B, T, Hkv, D}).transpose(1, 2);
  q = apply_rope(q, cos, sin);
  k = apply_rope(k, cos, sin);
  trace(opt, i, "q", q);
  trace(opt, i, "k", k);
  trace(opt, i, "v", v);
  torch::Tensor a = at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0,
                                                     /*is_causal=*/true, /*scale=*/std::nullopt,
                                                     /*enable_gqa=*/H != Hkv);
  a = a.transpose(1, 2).reshape({B, T, H * D});  // (B,T,H*D): per-head outputs before o_proj
  trace(opt, i, "attn_out", a);
  a = F::linear(a, l.o->weight);
  trace(opt, i, "attn_proj", a);
  x = x + a;
  // --- SwiGLU MLP
  h = rms_norm(x, l.ffn_norm->weight, cfg_.rms_norm_eps);
  trace(opt, i, "ffn_norm", h);
  torch::Tensor act = swiglu(F::linear(h, l.gate->weight), F::linear(h, l.up->weight));  // (B,T,I)
  trace(opt, i, "ffn_act", act);
  torch::Tensor m = F::linear(act, l.down->weight);
  trace(opt, i, "ffn_out", m);
  x = x + m;
  trace(opt, i, "layer_out", x);
  return x;
}

// Activation checkpointing: forward runs the layer without recording a graph; backward runs it again
// with grad enabled and differentiates that recomputation. Inputs: x, then the layer's weights. What
// backward needs is kept in the autograd context (the model outlives its graphs; the trace hook is
// not called during recomputation).
struct BlockCall {
  LlamaImpl* self;
  int64_t index;
  torch::Tensor cos, sin;
  const ForwardOptions* opt;
};

class CheckpointedBlock : public torch::autograd::Function<CheckpointedBlock> {
 public:
  // The nine weights are separate arguments: autograd tracks Tensor arguments, not vectors of them.
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, torch::Tensor, torch::Tensor,
                               torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor,
                               torch::Tensor, torch::Tensor, BlockCall call) {
    ctx->save_for_backward({x});
    ctx->saved_data["self"] = reinterpret_cast<int64_t>(call.self);
    ctx->saved_data["index"] = call.index;
    ctx->saved_data["cos"] = call.cos;
    ctx->saved_data["sin"] = call.sin;
    torch::NoGradGuard ng;
    return call.self->block(call.self->layers_[call.index], call.index, x, call.cos, call.sin, *call.opt);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto* self = reinterpret_cast<LlamaImpl*>(ctx->saved_data["self"].toInt());
    const int64_t index = ctx->saved_data["index"].toInt();
    const LlamaLayer& l = self->layers_[index];
    torch::Tensor x = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    std::vector<torch::Tensor> inputs = {x, l.attn_norm->weight, l.q->weight, l.k->weight, l.v->weight, l.o->weight,
                                         l.ffn_norm->weight, l.gate->weight, l.up->weight, l.down->weight};
    torch::Tensor y;
    {
      torch::AutoGradMode grad_on(true);
      y = self->block(l, index, x, ctx->saved_data["cos"].toTensor(), ctx->saved_data["sin"].toTensor(), ForwardOptions{});
    }
    auto grads = torch::autograd::grad({y}, inputs, {grad_out[0]}, /*retain_graph=*/false,
                                       /*create_graph=*/false, /*allow_unused=*/true);
    grads.push_back(torch::Tensor());  // the BlockCall argument
    return grads;
  }
};

ForwardOutput LlamaImpl::forward(const torch::Tensor& input_ids, const ForwardOptions& opt) {
  if (input_ids.dim() != 2 || input_ids.scalar_type() != torch::kLong) {
    throw Error("Llama forward: input_ids must be (B,T) int64, got " + shape_str(input_ids.sizes().vec()) +
                " " + std::string(c10::toString(input_ids.scalar_type())));
  }
  if (embed_->weight.numel() == 0) throw Error("Llama forward: the model has no weights yet", "load a checkpoint or call init_random");
  ForwardOutput out;
  torch::Tensor x = F::embedding(input_ids, embed_->weight);  // (B,T,C)
  trace(opt, -1, "embed", x);
  if (opt.return_hidden) out.hidden_states.push_back(x);
  auto [cos, sin] = rope_cos_sin(opt.start_pos, input_ids.size(1), x.device());
  cos = cos.to(x.scalar_type());
  sin = sin.to(x.scalar_type());
  const bool checkpoint = opt.checkpoint_layers && torch::GradMode::is_enabled();
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (checkpoint) {
      const LlamaLayer& l = layers_[i];
      x = CheckpointedBlock::apply(x, l.attn_norm->weight, l.q->weight, l.k->weight, l.v->weight, l.o->weight,
                                   l.ffn_norm->weight, l.gate->weight, l.up->weight, l.down->weight,
                                   BlockCall{this, static_cast<int64_t>(i), cos, sin, &opt});
    } else {
      x = block(layers_[i], static_cast<int64_t>(i), x, cos, sin, opt);
    }
    if (opt.return_hidden && i + 1 < layers_.size()) out.hidden_states.push_back(x);
  }
  x = rms_norm(x, final_norm_->weight, cfg_.rms_norm_eps);
  trace(opt, -1, "final_norm", x);
  if (opt.return_hidden) out.hidden_states.push_back(x);
  out.last_hidden = x;
  if (opt.compute_logits) {
    out.logits = F::linear(x, output_weight());  // (B,T,V)
    trace(opt, -1, "logits", out.logits);
  }
  return out;
}

void LlamaImpl::load_state(const std::map<std::string, torch::Tensor>& tensors, const std::string& source) {
  torch::NoGradGuard no_grad;
  auto params = named_parameters(/*recurse=*/true);
  auto specs = llama_tensor_specs(cfg_);
  std::vector<std::string> missing;
  for (auto& p : params) {
    auto it = tensors.find(p.key());
    if (it == tensors.end()) {
      missing.push_back(p.key());
      continue;
    }
    const auto& want = find_spec(specs, p.key())->shape;
    if (it->second.sizes().vec() != want) {
      throw Error(source + ": tensor '" + p.key() + "' has wrong shape; expected " + shape_str(want) + ", got " +
                      shape_str(it->second.sizes().vec()),
                  "the checkpoint does not match its config.json");
    }
    p.value().set_data(it->second);
  }
  if (!missing.empty()) {
    throw Error(source + ": " + std::to_string(missing.size()) + " tensor(s) missing, first '" + missing[0] + "'",
                "the checkpoint is incomplete or is not a Llama of this shape");
  }
  for (const auto& [name, t] : tensors) {
    // A tied checkpoint may still carry lm_head.weight (a copy of the embedding): it is unused.
    if (name == "lm_head.weight" && cfg_.tie_word_embeddings) continue;
    if (params.find(name) == nullptr) {
      throw Error(source + ": unexpected tensor '" + name + "'", "the checkpoint does not match its config.json");
    }
  }
}

void LlamaImpl::init_random(uint64_t seed, double std) {
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto specs = llama_tensor_specs(cfg_);
  for (auto& p : named_parameters(true)) {
    const auto& shape = find_spec(specs, p.key())->shape;
    torch::Tensor t = shape.size() == 1 ? torch::ones(shape) : at::normal(0.0, std, shape, gen);
    p.value().set_data(t);
  }
}

std::vector<int64_t> greedy_generate_reference(Llama& model, std::vector<int64_t> ids, int64_t n_new) {
  torch::NoGradGuard no_grad;
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n_new; ++i) {
    auto input = torch::tensor(ids, torch::kLong).unsqueeze(0);
    torch::Tensor logits = model->forward(input).logits;
    int64_t next = logits[0][-1].argmax().item<int64_t>();
    out.push_back(next);
    ids.push_back(next);
  }
  return out;
}

}  // namespace bonsai
