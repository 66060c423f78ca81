// The pruning recipe (`bonsai prune --config X.yaml`), straight-line: set up (teacher config,
// target, calibration data: every bad input is reported here, before any heavy work) -> calibrate
// (activation statistics of the teacher) -> select (units to keep) -> slice -> save (an HF
// checkpoint, re-loaded to check it) -> report.
//
// A parameter budget (target.params) instead of sizes: the shapes of a small grid that meet it
// (prune.h, budget_candidates) are each pruned and scored by their calibration loss, and the lowest
// wins. Minitron ranks its candidates after a short distillation instead; without one, the loss
// right after pruning is the cheap proxy (every candidate and its loss are in the report). Likewise
// target.tie_from: auto tries the embedding, lm_head and their mean for a tied student of an untied
// teacher and keeps the lowest calibration loss.
//
// Output directory:
//   student/                    the pruned model (HF: config.json, safetensors, tokenizer files)
//   importance.safetensors      the calibration statistics (calib.scores_from reuses them)
//   check_logits.safetensors    input_ids and bonsai's fp32 logits of student/ (for
//                               scripts/ref/check_pruned_hf.py, which compares with transformers)
//   report.json, report.md      importance of every unit, what was kept, parameters and losses
#pragma once

#include <string>
#include <vector>

#include "core/config.h"
#include "prune/prune.h"

namespace bonsai {

struct PruneConfig {
  std::string teacher;               // HF directory, GGUF or known name
  std::string teacher_dtype = "f32";  // f32 | bf16: calibration and evaluation dtype
  PruneTarget target;
  std::string params;                 // a parameter budget ("3.2B") instead of (some) explicit sizes
  std::string tie_from = "auto";      // auto | embed | lm_head | mean (untied teacher -> tied student)
  std::string width = "activation";   // activation | magnitude | random
  std::string depth = "block";        // block | contiguous | loss | random
  std::string heads = "contribution";  // head score: contribution | attn_out
  int64_t seed = 0;                   // for the random selections
  bool norm_rescale = true, q_rescale = true;
  std::vector<std::string> calib_data, eval_data;
  std::string tokenizer;              // what the shards must be tokenized with ("" = the teacher's)
  int64_t calib_samples = 1024, calib_seq_len = 4096, calib_batch = 1, calib_seed = 0;
  std::string scores_from;            // reuse an importance.safetensors of this teacher
  int64_t eval_samples = 0, eval_seq_len = 0;  // held-out windows (0 samples: no eval; 0 len: calib's)
  bool eval_teacher = true;
  double budget_tolerance = 0.05;
  int64_t budget_candidates = 8;
  std::string device = "auto";        // auto | cpu | cuda
  std::string output;
  std::string save_dtype = "bf16";

  void register_keys(ConfigSchema& s);
  // The checks that need no files (run first by run_prune).
  void validate() const;
};

int run_prune(const PruneConfig& c, const std::string& resolved_yaml);

// Loads the HF checkpoint `student_dir` with bonsai (fp32) and writes `out` (safetensors): fixed
// input_ids (2 x 16, seeded, within the vocabulary) and bonsai's logits on them, for
// scripts/ref/check_pruned_hf.py to compare with transformers.
void write_check_logits(const std::string& student_dir, const std::string& out);

}  // namespace bonsai
