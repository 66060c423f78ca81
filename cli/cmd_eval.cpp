// `bonsai eval`: perplexity, multiple-choice and GSM8K benchmarks (eval/harness.h). Prints the
// markdown table to stdout, progress and timing to stderr.
//   bonsai eval --model smollm2-135m-instruct --task hellaswag --limit 200 --output runs/eval/hs.json
//   bonsai eval --config configs/eval/smollm2_arc.yaml
#include <cstdio>
#include <cstdlib>

#include "cli/command.h"
#include "eval/harness.h"
#include "eval/tasks.h"

namespace bonsai {

std::unique_ptr<Command> make_eval_command(CLI::App& app) {
  auto cmd = std::make_unique<Command>(app, "eval", "Evaluate a model: perplexity, multiple choice (ARC, HellaSwag, PIQA, MMLU, JSONL), GSM8K");
  auto cfg = std::make_shared<eval::EvalConfig>();
  auto& s = cmd->schema();
  s.add("model", &cfg->model, "HF directory, .gguf file, or a known name (smollm2-135m-instruct)");
  s.add("tokenizer", &cfg->tokenizer, "tokenizer to use instead of the model's own");
  s.add_choice("task", &cfg->task, eval::task_names(), "what to evaluate");
  s.add("data", &cfg->data, "task file or folder (default: the task's file under data_root/eval)");
  s.add("data_root", &cfg->shared_data, "folder with eval/ for default task data (default: $BONSAI_SHARED_DATA, else ../shared/data)");
  s.add("shots", &cfg->shots, "few-shot exemplars; -1 = the task's default (mmlu 5, gsm8k 5, others 0)");
  s.add("limit", &cfg->limit, "first N questions (perplexity: first N tokens); 0 = all");
  s.add("output", &cfg->output, "results JSON path; a markdown table is written beside it (.md)");
  s.add("samples", &cfg->samples, "per-item JSONL (log-likelihoods, predictions, generations)");
  s.add("chat", &cfg->chat, "wrap prompts in the model's chat template (instruct models)");
  s.add("system", &cfg->system, "chat: a system message (gsm8k)");
  s.add_choice("dtype", &cfg->dtype, {"f32", "bf16"}, "dtype the weights are computed in");
  s.add_choice("bos", &cfg->bos, {"auto", "true", "false"}, "prepend BOS: auto = when the tokenizer asks for it");
  s.add("window", &cfg->window, "perplexity: tokens per window; 0 = min(model context, 2048)");
  s.add("stride", &cfg->stride, "perplexity: window step; 0 = window / 2");
  s.add("batch_tokens", &cfg->batch_tokens, "multiple choice: questions packed per forward, in tokens (1 = one question at a time)");
  s.add("max_tokens", &cfg->max_tokens, "gsm8k: most tokens generated per question");
  s.add("batch_size", &cfg->batch_size, "gsm8k: questions generated together");
  s.add("seed", &cfg->seed, "seed of the few-shot draws");
  s.add("threads", &cfg->threads, "torch threads; 0 = torch's default (all cores)");
  s.add("progress", &cfg->progress, "show a progress bar on stderr");
  s.require("model", "give --model PATH_OR_NAME");
  s.require("task", "give --task NAME (perplexity, arc, hellaswag, piqa, mmlu, gsm8k, jsonl-mc)");
  cmd->option("--model,-m", "model", "model directory, .gguf or known name");
  cmd->option("--tokenizer", "tokenizer", "tokenizer instead of the model's own");
  cmd->option("--task,-t", "task", "perplexity, arc, hellaswag, piqa, mmlu, gsm8k or jsonl-mc");
  cmd->option("--data,-d", "data", "task file or folder");
  cmd->option("--shots,-k", "shots", "few-shot exemplars");
  cmd->option("--limit,-n", "limit", "first N questions");
  cmd->option("--output,-o", "output", "results JSON (+ .md beside it)");
  cmd->option("--samples", "samples", "per-item JSONL");
  cmd->flag("--chat", "chat", "use the chat template");
  cmd->option("--dtype", "dtype", "f32 or bf16");
  cmd->finish_help();
  cmd->run = [cfg] {
    if (cfg->shared_data.empty()) {
      const char* env = std::getenv("BONSAI_SHARED_DATA");
      cfg->shared_data = env != nullptr ? env : "../shared/data";
    }
    auto doc = eval::run_eval(*cfg);
    std::string md = eval::results_markdown(doc);
    std::fwrite(md.data(), 1, md.size(), stdout);
    const auto& m = doc["results"][cfg->task];
    const auto& t = m["timing"];
    if (t.contains("items_per_s"))
      std::fprintf(stderr, "%s: %lld items in %.2f s (%.2f items/s), model loaded in %.2f s\n", cfg->task.c_str(),
                   static_cast<long long>(m["samples"].get<int64_t>()), t["eval_s"].get<double>(),
                   t["items_per_s"].get<double>(), t["load_s"].get<double>());
    else
      std::fprintf(stderr, "perplexity: %lld tokens in %.2f s (%.1f tokens/s)\n", static_cast<long long>(m["tokens"].get<int64_t>()),
                   t["eval_s"].get<double>(), t["tokens_per_s"].get<double>());
    return 0;
  };
  return cmd;
}

}  // namespace bonsai
