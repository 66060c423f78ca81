#include "train/optim.h"

#include <cmath>

namespace bonsai {

std::unique_ptr<torch::optim::AdamW> make_adamw(const std::vector<OptTensor>& tensors, const TrainConfig& cfg) {
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& t : tensors) {
    const std::string& n = t.name;
    bool is_norm = t.dim < 2;
    bool is_embedding = n.find("embed_tokens") != std::string::npos || n.find("lm_head") != std::string::npos;
    (is_norm || (is_embedding && !cfg.decay_embeddings) ? no_decay : decay).push_back(t.value);
  }
  auto opts = torch::optim::AdamWOptions(cfg.lr).betas({cfg.beta1, cfg.beta2}).eps(cfg.eps);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(opts).weight_decay(cfg.weight_decay)));
  groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(opts).weight_decay(0.0)));
  return std::make_unique<torch::optim::AdamW>(std::move(groups), opts);
}

std::unique_ptr<torch::optim::AdamW> make_adamw(torch::nn::Module& model, const TrainConfig& cfg) {
  std::vector<OptTensor> all;
  for (auto& p : model.named_parameters()) all.push_back({p.key(), p.value(), p.value().dim()});
  return make_adamw(all, cfg);
}

double lr_at(int64_t step, const TrainConfig& c) {
  if (c.warmup_steps > 0 && step < c.warmup_steps) return c.lr * static_cast<double>(step + 1) / c.warmup_steps;
  const double min_lr = c.lr * c.min_lr_ratio;
  const int64_t span = std::max<int64_t>(1, c.max_steps - 1 - c.warmup_steps);
  const double t = std::min(1.0, static_cast<double>(step - c.warmup_steps) / span);  // 0 -> 1 after warmup
  if (c.schedule == "constant") return c.lr;
  if (c.schedule == "linear") return c.lr + (min_lr - c.lr) * t;
  if (c.schedule == "cosine") return min_lr + 0.5 * (c.lr - min_lr) * (1 + std::cos(M_PI * t));
  // wsd: stable at lr, then linear decay over the last decay_fraction of all steps
  const double decay_start = 1.0 - c.decay_fraction;
  if (t <= decay_start) return c.lr;
  return c.lr + (min_lr - c.lr) * (t - decay_start) / c.decay_fraction;
}

int64_t optimizer_state_bytes(torch::optim::Optimizer& opt) {
  int64_t bytes = 0;
  for (auto& [key, state] : opt.state()) {
    auto& s = static_cast<torch::optim::AdamWParamState&>(*state);
    bytes += s.exp_avg().defined() ? s.exp_avg().nbytes() : 0;
    bytes += s.exp_avg_sq().defined() ? s.exp_avg_sq().nbytes() : 0;
  }
  return bytes;
}

void set_lr(torch::optim::Optimizer& opt, double lr) {
  for (auto& g : opt.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
}

double clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm) {
  torch::NoGradGuard ng;
  torch::Tensor total;  // on the gradients' device: one synchronisation for the whole norm
  for (const auto& p : params) {
    if (!p.grad().defined()) continue;
    torch::Tensor sq = p.grad().to(torch::kDouble).pow(2).sum();
    total = total.defined() ? total + sq : sq;
  }
  if (!total.defined()) total = torch::zeros({}, torch::kDouble);
  double norm = std::sqrt(total.item<double>());
  if (max_norm > 0 && std::isfinite(norm) && norm > max_norm) {
    double scale = max_norm / (norm + 1e-6);
    for (const auto& p : params)
      if (p.grad().defined()) p.grad().mul_(scale);
  }
  return norm;
}

}  // namespace bonsai
