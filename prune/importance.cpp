// Calibration statistics through the trace hook: running sums on the model's device (fp64), read
// back once at the end. See importance.h for the aggregation and why.
#include "prune/importance.h"

#include <cstring>
#include <deque>

#include "core/error.h"
#include "core/strings.h"
#include "model/checkpoint.h"
#include "prune/prune.h"

namespace bonsai {
namespace {

namespace F = torch::nn::functional;

// sum over sequences of (mean over tokens of |x|)^2, per channel; x is (B, T, N).
void add_channel_score(torch::Tensor& acc, const torch::Tensor& x) {
  torch::Tensor s = x.to(torch::kFloat).abs().mean(1).to(torch::kDouble).pow(2).sum(0);
  acc = acc.defined() ? acc + s : s;
}

// Per-channel sum of squares over (B, T) of x (B, T, N).
void add_sum_sq(torch::Tensor& acc, const torch::Tensor& x) {
  torch::Tensor s = x.to(torch::kFloat).pow(2).sum(std::vector<int64_t>{0, 1}).to(torch::kDouble);
  acc = acc.defined() ? acc + s : s;
}

// Per head h: sum over sequences of (mean over tokens of ||attn_out_h . o_proj[:, h]^T||_2)^2, i.e.
// the norm of what the head adds to the residual stream. a is (B, T, H*D), o (C, H*D). Heads are
// done a few at a time as one batched matmul, so the (heads, B*T, C) product stays near 64M values.
void add_head_contrib(torch::Tensor& acc, const torch::Tensor& a, const torch::Tensor& o, int64_t H) {
  const int64_t B = a.size(0), T = a.size(1), D = a.size(2) / H, C = o.size(0);
  torch::Tensor ah = a.reshape({B * T, H, D}).transpose(0, 1);  // (H, BT, D)
  torch::Tensor oh = o.view({C, H, D}).permute({1, 2, 0});       // (H, D, C)
  const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 26) / std::max<int64_t>(1, B * T * C));
  std::vector<torch::Tensor> parts;
  for (int64_t h = 0; h < H; h += chunk) {
    const int64_t n = std::min(chunk, H - h);
    torch::Tensor y = torch::bmm(ah.narrow(0, h, n), oh.narrow(0, h, n));  // (n, BT, C)
    parts.push_back(y.to(torch::kFloat).norm(2, -1).view({n, B, T}).mean(2).to(torch::kDouble).pow(2).sum(1));
  }
  torch::Tensor s = torch::cat(parts);
  acc = acc.defined() ? acc + s : s;
}

// Sum over tokens of cos(a, b) along the hidden dimension.
double cos_sum(const torch::Tensor& a, const torch::Tensor& b) {
  return F::cosine_similarity(a.to(torch::kFloat), b.to(torch::kFloat), F::CosineSimilarityFuncOptions().dim(-1))
      .to(torch::kDouble)
      .sum()
      .item<double>();
}

torch::Tensor cpu(const torch::Tensor& t) { return t.defined() ? t.to(torch::kCPU) : t; }

// The trace hook's target: one call per named activation (see model/llama.h for the order).
class Collector {
 public:
  Collector(const LlamaConfig& c, std::vector<torch::Tensor> o_proj, int64_t span)
      : L_(c.num_hidden_layers), H_(c.num_attention_heads), span_(span), o_proj_(std::move(o_proj)), attn_(L_),
        contrib_(L_), neuron_(L_), norm_out_(2 * L_ + 1), norm_in_(2 * L_ + 1), bi_sum_(L_, 0.0),
        span_sum_(span > 0 ? L_ - span + 1 : 0, 0.0) {}

  void on(int64_t l, const std::string& name, const torch::Tensor& t) {
    if (name == "embed") {
      sequences_ += t.size(0);
      tokens_ += t.size(0) * t.size(1);
      x_in_ = t;
      history_.clear();
      pushed_ = 0;
      push_hidden(t);
    } else if (name == "attn_norm") {
      add_channel_score(norm_out_[2 * l], t);
      add_sum_sq(norm_in_[2 * l], x_in_);
    } else if (name == "attn_out") {
      add_channel_score(attn_[l], t);
      add_head_contrib(contrib_[l], t, o_proj_[l], H_);
    } else if (name == "attn_proj") {
      add_sum_sq(norm_in_[2 * l + 1], x_in_ + t);  // the ffn norm's input, as the block computes it
    } else if (name == "ffn_norm") {
      add_channel_score(norm_out_[2 * l + 1], t);
    } else if (name == "ffn_act") {
      add_channel_score(neuron_[l], t);
    } else if (name == "layer_out") {
      bi_sum_[l] += cos_sum(x_in_, t);
      x_in_ = t;
      push_hidden(t);
    } else if (name == "final_norm") {
      add_channel_score(norm_out_[2 * L_], t);
      add_sum_sq(norm_in_[2 * L_], x_in_);
      x_in_ = torch::Tensor();
      history_.clear();
    }
  }

  CalibStats finish(double loss) const {
    if (tokens_ == 0) throw Error("calibration: no tokens were seen", "give at least one calibration sequence");
    CalibStats s;
    s.num_layers = L_;
    s.sequences = sequences_;
    s.tokens = tokens_;
    s.loss = loss;
    const double n = static_cast<double>(tokens_);
    for (int64_t l = 0; l < L_; ++l) {
      s.attn_channel.push_back(cpu(attn_[l]).sqrt());
      s.neuron.push_back(cpu(neuron_[l]).sqrt());
      s.head_contrib.push_back(cpu(contrib_[l]).sqrt());
    }
    for (int64_t i = 0; i <= 2 * L_; ++i) {
      s.norm_out.push_back(cpu(norm_out_[i]).sqrt());
      s.norm_in_ms.push_back(cpu(norm_in_[i]) / n);
    }
    s.block_importance = 1.0 - torch::tensor(bi_sum_, torch::kDouble) / n;
    s.span = span_;
    if (span_ > 0) s.span_cos = torch::tensor(span_sum_, torch::kDouble) / n;
    return s;
  }

 private:
  // Hidden state h_i (the input of layer i) for the span cosines: keeps the last span + 1 only.
  void push_hidden(const torch::Tensor& h) {
    if (span_ <= 0) return;
    history_.push_back(h);
    ++pushed_;
    if (static_cast<int64_t>(history_.size()) > span_ + 1) history_.pop_front();
    if (static_cast<int64_t>(history_.size()) == span_ + 1) span_sum_[pushed_ - 1 - span_] += cos_sum(history_.front(), h);
  }

  int64_t L_, H_, span_;
  std::vector<torch::Tensor> o_proj_;  // each layer's o_proj weight (for the head contributions)
  std::vector<torch::Tensor> attn_, contrib_, neuron_, norm_out_, norm_in_;
  std::vector<double> bi_sum_, span_sum_;
  int64_t sequences_ = 0, tokens_ = 0, pushed_ = 0;
  torch::Tensor x_in_;  // the current layer's input
  std::deque<torch::Tensor> history_;
};

torch::Device model_device(Llama& m) { return m->embedding_weight().device(); }

// Cross-entropy of hidden states (B,T,C) against labels (B,T) through `w` (V,C), in token chunks.
LossSum loss_from_hidden(const torch::Tensor& hidden, const torch::Tensor& w, const torch::Tensor& labels, int64_t chunk) {
  torch::Tensor h = hidden.reshape({-1, hidden.size(-1)});
  torch::Tensor y = labels.reshape({-1});
  LossSum out;
  for (int64_t i = 0; i < h.size(0); i += chunk) {
    const int64_t n = std::min(chunk, h.size(0) - i);
    torch::Tensor logits = F::linear(h.narrow(0, i, n), w).to(torch::kFloat);
    out.nll += F::cross_entropy(logits, y.narrow(0, i, n), F::CrossEntropyFuncOptions().reduction(torch::kSum))
                   .item<double>();
    out.tokens += n;
  }
  return out;
}

void check_batch(const torch::Tensor& b) {
  if (b.dim() != 2 || b.size(1) < 2 || b.scalar_type() != torch::kLong)
    throw Error("calibration batch must be (B, T+1) int64 ids with T >= 1, got " + shape_str(b.sizes().vec()));
}

}  // namespace

torch::Tensor CalibStats::head_scores(int64_t layer, int64_t head_dim) const {
  const torch::Tensor& a = attn_channel.at(static_cast<size_t>(layer));
  return a.view({-1, head_dim}).norm(2, 1);
}

torch::Tensor CalibStats::hidden_scores(const std::vector<int64_t>& layers) const {
  torch::Tensor s = norm_out.back().clone();
  for (int64_t l : layers) s += norm_out.at(2 * l) + norm_out.at(2 * l + 1);
  return s;
}

uint64_t batches_hash(const std::vector<torch::Tensor>& batches) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](int64_t v) {
    for (int i = 0; i < 8; ++i, v >>= 8) h = (h ^ static_cast<uint64_t>(v & 0xff)) * 1099511628211ull;
  };
  for (const auto& b : batches) {
    torch::Tensor t = b.to(torch::kCPU, torch::kLong).contiguous();
    mix(t.size(0)), mix(t.size(1));
    const int64_t* p = t.data_ptr<int64_t>();
    for (int64_t i = 0; i < t.numel(); ++i) mix(p[i]);
  }
  return h;
}

LossSum lm_loss(Llama& model, const torch::Tensor& batch, int64_t chunk) {
  check_batch(batch);
  torch::NoGradGuard ng;
  const int64_t T = batch.size(1) - 1;
  torch::Tensor b = batch.to(model_device(model));
  ForwardOptions fo;
  fo.compute_logits = false;
  torch::Tensor h = model->forward(b.narrow(1, 0, T), fo).last_hidden;
  return loss_from_hidden(h, model->output_weight(), b.narrow(1, 1, T), chunk);
}

double mean_lm_loss(Llama& model, const std::vector<torch::Tensor>& batches, int64_t chunk) {
  LossSum total;
  for (const auto& b : batches) {
    LossSum s = lm_loss(model, b, chunk);
    total.nll += s.nll;
    total.tokens += s.tokens;
  }
  return total.mean();
}

CalibStats calibrate(Llama& teacher, const std::vector<torch::Tensor>& batches, const CalibOptions& opt) {
  const LlamaConfig& c = teacher->config();
  if (opt.span < 0 || opt.span > c.num_hidden_layers)
    throw Error("calibration: layer span " + std::to_string(opt.span) + " is outside [0, " +
                std::to_string(c.num_hidden_layers) + "]");
  torch::NoGradGuard ng;
  teacher->eval();
  std::vector<torch::Tensor> o_proj;
  for (const auto& l : teacher->layers()) o_proj.push_back(l.o->weight);
  Collector col(c, o_proj, opt.span);
  TraceFn fn = [&col, &opt](int64_t layer, const char* name, const torch::Tensor& t) {
    col.on(layer, name, t);
    if (opt.layer_done && std::strcmp(name, "layer_out") == 0) opt.layer_done(layer);
  };
  ForwardOptions fo;
  fo.compute_logits = false;
  fo.trace = &fn;
  LossSum loss;
  const torch::Device dev = model_device(teacher);
  for (const auto& batch : batches) {
    check_batch(batch);
    const int64_t T = batch.size(1) - 1;
    torch::Tensor b = batch.to(dev);
    torch::Tensor h = teacher->forward(b.narrow(1, 0, T), fo).last_hidden;
    LossSum s = loss_from_hidden(h, teacher->output_weight(), b.narrow(1, 1, T), opt.loss_chunk);
    loss.nll += s.nll;
    loss.tokens += s.tokens;
    if (opt.layer_done) opt.layer_done(-1);
  }
  CalibStats s = col.finish(loss.mean());
  s.data_hash = batches_hash(batches);
  return s;
}

torch::Tensor layer_drop_losses(const LlamaConfig& cfg, const std::map<std::string, torch::Tensor>& tensors,
                                const std::vector<torch::Tensor>& batches, torch::Device device, int64_t chunk) {
  if (cfg.num_hidden_layers < 2) throw Error("layer drop losses need at least 2 layers");
  std::vector<double> out;
  for (int64_t drop = 0; drop < cfg.num_hidden_layers; ++drop) {
    std::vector<int64_t> kept;
    for (int64_t l = 0; l < cfg.num_hidden_layers; ++l)
      if (l != drop) kept.push_back(l);
    auto [sub_cfg, sub] = keep_layers(cfg, tensors, kept);
    Llama m(sub_cfg);
    m->load_state(sub, "teacher without layer " + std::to_string(drop));
    m->to(device);
    out.push_back(mean_lm_loss(m, batches, chunk));
  }
  return torch::tensor(out, torch::kDouble);
}

void CalibStats::save(const std::string& path, const LlamaConfig& t) const {
  std::map<std::string, torch::Tensor> m;
  auto put = [&m](const std::string& name, const std::vector<torch::Tensor>& v) {
    for (size_t i = 0; i < v.size(); ++i) m[name + "." + std::to_string(i)] = v[i];
  };
  put("attn_channel", attn_channel);
  put("neuron", neuron);
  put("norm_out", norm_out);
  put("norm_in_ms", norm_in_ms);
  put("head_contrib", head_contrib);
  m["block_importance"] = block_importance;
  if (span > 0) m["span_cos"] = span_cos;
  if (drop_loss.defined()) m["drop_loss"] = drop_loss;
  m["meta"] = torch::tensor({loss, static_cast<double>(sequences), static_cast<double>(tokens), static_cast<double>(span)},
                            torch::kDouble);
  m["data_hash"] = torch::tensor({static_cast<int64_t>(data_hash)}, torch::kLong);
  m["shape"] = torch::tensor({t.vocab_size, t.hidden_size, t.intermediate_size, t.num_hidden_layers,
                              t.num_attention_heads, t.num_key_value_heads, t.head_dim}, torch::kLong);
  save_safetensors(path, m, {{"bonsai.kind", "prune-calibration"}});
}

CalibStats CalibStats::load(const std::string& path, const LlamaConfig& t) {
  auto m = load_safetensors(path);
  auto get = [&](const std::string& name) -> torch::Tensor {
    auto it = m.find(name);
    if (it == m.end()) throw Error("'" + path + "' has no tensor '" + name + "'", "it is not a bonsai prune calibration file");
    return it->second.clone();
  };
  torch::Tensor want = torch::tensor({t.vocab_size, t.hidden_size, t.intermediate_size, t.num_hidden_layers,
                                      t.num_attention_heads, t.num_key_value_heads, t.head_dim}, torch::kLong);
  if (!torch::equal(get("shape"), want))
    throw Error("'" + path + "' was calibrated on a teacher of another shape", "calibrate this teacher (drop calib.scores_from)");
  CalibStats s;
  s.num_layers = t.num_hidden_layers;
  auto meta = get("meta");
  s.loss = meta[0].item<double>();
  s.sequences = static_cast<int64_t>(meta[1].item<double>());
  s.tokens = static_cast<int64_t>(meta[2].item<double>());
  s.span = static_cast<int64_t>(meta[3].item<double>());
  s.data_hash = static_cast<uint64_t>(get("data_hash")[0].item<int64_t>());
  for (int64_t l = 0; l < s.num_layers; ++l) {
    const std::string i = "." + std::to_string(l);
    s.attn_channel.push_back(get("attn_channel" + i));
    s.neuron.push_back(get("neuron" + i));
    s.head_contrib.push_back(get("head_contrib" + i));
  }
  for (int64_t i = 0; i <= 2 * s.num_layers; ++i) {
    s.norm_out.push_back(get("norm_out." + std::to_string(i)));
    s.norm_in_ms.push_back(get("norm_in_ms." + std::to_string(i)));
  }
  s.block_importance = get("block_importance");
  if (s.span > 0) s.span_cos = get("span_cos");
  if (m.count("drop_loss")) s.drop_loss = get("drop_loss");
  return s;
}

}  // namespace bonsai
