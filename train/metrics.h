// Run logging: metrics.jsonl (one JSON object per optimizer step; validation records carry
// "split":"val"), TensorBoard scalars with the same names, and a one-line progress display with
// tokens/s and ETA on stderr. Only rank 0 logs (others construct it disabled).
#pragma once

#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include "train/tb_writer.h"

namespace bonsai {

class MetricsLogger {
 public:
  // `append` keeps an existing metrics.jsonl (a resumed run continues it).
  MetricsLogger(const std::string& run_dir, bool enabled, bool append);
  ~MetricsLogger();
  // values: e.g. {"loss", 2.3}, {"lr", 3e-4}; step is the optimizer step (1-based after it ran).
  void log_train(int64_t step, int64_t max_steps, const std::map<std::string, double>& values);
  void log_val(int64_t step, const std::map<std::string, double>& values);
  void message(const std::string& line);  // a plain line on stderr (rank 0 only)

 private:
  void write_json(int64_t step, const char* split, const std::map<std::string, double>& values);
  bool enabled_;
  std::FILE* jsonl_ = nullptr;
  std::unique_ptr<TbWriter> tb_;
  std::chrono::steady_clock::time_point start_;
  int64_t first_step_ = -1;
  bool tty_;
};

}  // namespace bonsai
