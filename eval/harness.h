// `bonsai eval`: one task on one model, straight through: load the task file, load the model, score
// every question (multiple choice by log-likelihood, GSM8K by generation through the runtime engine,
// perplexity by sliding windows), then write results JSON + a markdown table (+ per-item samples).
//
// Prompts and metrics follow lm-evaluation-harness: for multiple choice, the context and a
// continuation (delimiter + choice) are encoded as lm-eval's _encode_pair does (trailing spaces of
// the context move to the continuation; the continuation's ids are encode(context+continuation)
// minus the context's ids); acc = argmax of the summed log-likelihood, acc_norm = argmax of it
// divided by the choice's length in UTF-8 bytes (lm-eval divides by len(str), the same for ASCII).
// Perplexity windows are Hugging Face's ("Perplexity of fixed-length models"): windows of `window`
// tokens every `stride` tokens, each scoring only the tokens the previous window did not.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace bonsai::eval {

struct EvalConfig {
  std::string model;       // HF directory, .gguf or known name
  std::string tokenizer;   // "" = the model's own
  std::string task;        // perplexity | arc | hellaswag | piqa | mmlu | gsm8k | jsonl-mc
  std::string data;        // file or folder; "" = the task's default under shared_data
  std::string shared_data; // the workplace's data folder (for default paths)
  int64_t shots = -1;      // -1 = the task's default (mmlu 5, gsm8k 5, others 0)
  int64_t limit = 0;       // first N questions (perplexity: first N tokens); 0 = all
  std::string output;      // results JSON path ("" = none); the markdown goes beside it (.md)
  std::string samples;     // per-item JSONL path ("" = none)
  bool chat = false;       // wrap prompts in the model's chat template
  std::string system;      // chat: system message
  std::string dtype = "f32";
  std::string bos = "auto";  // auto (the tokenizer's add_bos), true, false
  int64_t window = 0;      // perplexity: tokens per window; 0 = min(model context, 2048)
  int64_t stride = 0;      // perplexity: 0 = window / 2
  int64_t batch_tokens = 512;  // multiple choice: questions are packed into forwards of about this many tokens
  int64_t max_tokens = 256;  // gsm8k: generated tokens per question
  int64_t batch_size = 16;   // gsm8k: questions per engine batch
  int64_t seed = 1234;       // few-shot draws
  int64_t threads = 0;       // torch intra-op threads; 0 = torch's default
  bool progress = true;
};

// Runs the task; returns the results document (also written to cfg.output when set).
nlohmann::ordered_json run_eval(const EvalConfig& cfg);
// The markdown table of a results document.
std::string results_markdown(const nlohmann::ordered_json& results);

}  // namespace bonsai::eval
