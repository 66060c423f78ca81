#include "train/metrics.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "core/error.h"

namespace bonsai {

MetricsLogger::MetricsLogger(const std::string& run_dir, bool enabled, bool append)
    : enabled_(enabled), start_(std::chrono::steady_clock::now()), tty_(::isatty(2)) {
  if (!enabled_) return;
  std::filesystem::create_directories(run_dir);
  std::string path = run_dir + "/metrics.jsonl";
  jsonl_ = std::fopen(path.c_str(), append ? "a" : "w");
  if (jsonl_ == nullptr) throw Error("cannot write '" + path + "'", "check that the output directory is writable");
  tb_ = std::make_unique<TbWriter>(run_dir + "/tb");
}

MetricsLogger::~MetricsLogger() {
  if (jsonl_ != nullptr) std::fclose(jsonl_);
  if (enabled_ && tty_) std::fputc('\n', stderr);
}

void MetricsLogger::write_json(int64_t step, const char* split, const std::map<std::string, double>& values) {
  std::string line = "{\"step\":" + std::to_string(step) + ",\"split\":\"" + split + "\"";
  char buf[64];
  for (const auto& [k, v] : values) {
    if (std::isfinite(v)) std::snprintf(buf, sizeof buf, "%.9g", v);
    else std::snprintf(buf, sizeof buf, "\"%s\"", std::isnan(v) ? "NaN" : (v > 0 ? "Infinity" : "-Infinity"));
    line += ",\"" + k + "\":" + buf;
  }
  line += "}\n";
  std::fputs(line.c_str(), jsonl_);
  std::fflush(jsonl_);
  for (const auto& [k, v] : values) tb_->scalar(std::string(split) + "/" + k, v, step);
  tb_->flush();
}

void MetricsLogger::log_train(int64_t step, int64_t max_steps, const std::map<std::string, double>& values) {
  if (!enabled_) return;
  write_json(step, "train", values);
  // The clock starts when the first logged step ends: the ETA is the mean time of the steps since
  // then (the first step, with its warm-up, is left out) times the steps left.
  const auto now = std::chrono::steady_clock::now();
  if (first_step_ < 0) first_step_ = step, start_ = now;
  char eta[32] = "--";
  if (step > first_step_) {
    const double per_step = std::chrono::duration<double>(now - start_).count() / static_cast<double>(step - first_step_);
    const int s = static_cast<int>(per_step * static_cast<double>(max_steps - step));
    std::snprintf(eta, sizeof eta, "%dm%02ds", s / 60, s % 60);
  }
  auto get = [&](const char* k) { auto it = values.find(k); return it == values.end() ? 0.0 : it->second; };
  std::fprintf(stderr, "%sstep %ld/%ld | loss %.4f | lr %.2e | %.0f tok/s | ETA %s%s", tty_ ? "\r" : "",
               static_cast<long>(step), static_cast<long>(max_steps), get("loss"), get("lr"), get("tokens_per_s"), eta,
               tty_ ? "   " : "\n");
  std::fflush(stderr);
}

void MetricsLogger::log_val(int64_t step, const std::map<std::string, double>& values) {
  if (!enabled_) return;
  write_json(step, "val", values);
  std::string s;
  for (const auto& [k, v] : values) s += " " + k + " " + std::to_string(v);
  message("validation at step " + std::to_string(step) + ":" + s);
}

void MetricsLogger::message(const std::string& line) {
  if (!enabled_) return;
  std::fprintf(stderr, "%s%s\n", tty_ ? "\n" : "", line.c_str());
}

}  // namespace bonsai
