// AdamW with parameter groups (decay on matrices; never on norms; embeddings/output only when
// asked), the learning-rate schedules, and global-norm gradient clipping.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>

#include "train/train_config.h"

namespace bonsai {

// `owned` (optional) keeps only the parameters this rank updates (ZeRO-1 optimizer-state sharding).
std::unique_ptr<torch::optim::AdamW> make_adamw(torch::nn::Module& model, const TrainConfig& cfg,
                                                const std::function<bool(const std::string&)>& owned = {});
// Bytes of optimizer state (Adam moments) currently held.
int64_t optimizer_state_bytes(torch::optim::Optimizer& opt);
// Learning rate at optimizer step `step` (0-based): linear warmup to cfg.lr, then the schedule down
// to cfg.lr * cfg.min_lr_ratio at step max_steps - 1.
double lr_at(int64_t step, const TrainConfig& cfg);
void set_lr(torch::optim::Optimizer& opt, double lr);
// Clips the global L2 norm of all gradients to `max_norm` (0 = only measure). Returns the norm
// before clipping (fp32 accumulation; NaN/Inf propagate so the caller can detect them).
double clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm);

}  // namespace bonsai
