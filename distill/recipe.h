// The distillation recipe (`distill --config X.yaml`, `bonsai distill`), which is also plain LM
// training (`bonsai train`: no teacher, kd_weight 0) on the same trainer components.
// Straight-line: set up (models, data, optimizer, resume), loop, save.
#pragma once

#include <string>
#include <vector>

#include "core/config.h"
#include "distill/kd_loss.h"
#include "train/train_config.h"

namespace bonsai {

struct DistillConfig {
  std::string student;                   // HF dir, GGUF or known name: the student's weights (or shape)
  std::string student_init = "pretrained";  // pretrained | random (the student's config, fresh weights)
  std::vector<std::string> teachers;     // online teachers (HF dir, GGUF, name)
  std::vector<double> teacher_weights;   // mixing weights, default equal
  std::string teacher_dtype = "bf16";    // f32 | bf16: teachers are frozen and may run in bf16
  std::vector<std::string> topk;         // offline teachers: topk.h5 files from `distill precompute`
  std::vector<double> topk_weights;      // their mixing weights (default: equal with the online ones)
  std::vector<std::string> train_data;   // `bonsai data pack` outputs
  std::vector<std::string> val_data;
  std::string tokenizer;                 // tokenizer spec for the shard check (default: the student)
  KdLossOptions loss;
  TrainConfig train;
  std::string output;                    // run directory
  bool resume = false;                   // continue from output/checkpoints/latest
  std::string save_dtype = "f32";        // dtype of the final student checkpoint (output/student)
  int64_t dist_timeout_s = 600;          // a collective waiting longer fails the run (dead/hung rank)
  int64_t zero = 0;                      // 1: shard the Adam state (ZeRO-1); 2: also the averaged gradient (ZeRO-2)
  bool dist_overlap = true;              // all-reduce gradient buckets while backward runs (plain DP, ZeRO-1)
  double dist_bucket_mb = 25;            // gradient bucket size (MiB), as torch DDP's bucket_cap_mb

  void register_keys(ConfigSchema& s, bool with_teachers);
  void validate(bool with_teachers) const;
};

// Runs the recipe; `resolved_yaml` (the config as resolved) is stored in every checkpoint.
int run_distill(const DistillConfig& cfg, const std::string& resolved_yaml);

}  // namespace bonsai
