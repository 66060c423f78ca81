// `bonsai generate`: text generation with the KV-cache engine (runtime/engine.h) and the model's own
// tokenizer, from an HF directory, a .gguf file or a known model name. Plain text or chat (the model's
// chat template); one prompt is streamed to stdout as it is generated, --prompt-file batches one
// prompt per line, --json prints one JSON object per prompt. Timing goes to stderr.
//   bonsai generate --model smollm2-135m-instruct --chat --prompt 'What is the capital of France?'
//   bonsai generate -m runs/smollm2-hf --prompt-file prompts.txt --json --temperature 0.7 --seed 1
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

#include "cli/command.h"
#include "core/error.h"
#include "data/chat_template.h"
#include "data/tokenizer.h"
#include "model/checkpoint.h"
#include "model/registry.h"
#include "runtime/cuda_backend.h"
#include "runtime/cuda_ops.h"
#include "runtime/engine.h"

namespace bonsai {
namespace {

namespace fs = std::filesystem;

struct GenerateConfig {
  std::string model;
  std::string tokenizer;  // "" = the model's own
  std::string prompt;
  std::string prompt_file;
  bool chat = false;
  std::string system;
  int64_t max_tokens = 128;
  double temperature = 0.0;
  int64_t top_k = 0;
  double top_p = 1.0;
  double min_p = 0.0;
  double repetition_penalty = 1.0;
  int64_t seed = 0;
  std::vector<std::string> stop;
  std::string dtype = "f32";
  std::string device = "cpu";
  bool json = false;
};

// The prompts: --prompt, or the non-empty lines of --prompt-file ("-" = standard input).
std::vector<std::string> read_prompts(const GenerateConfig& cfg) {
  if (!cfg.prompt.empty() && !cfg.prompt_file.empty()) throw Error("give --prompt or --prompt-file, not both");
  if (!cfg.prompt.empty()) return {cfg.prompt};
  if (cfg.prompt_file.empty()) throw Error("no prompt given", "give --prompt TEXT or --prompt-file FILE (one prompt per line)");
  std::stringstream ss;
  if (cfg.prompt_file == "-") {
    ss << std::cin.rdbuf();
  } else {
    std::ifstream f(cfg.prompt_file, std::ios::binary);
    if (!f) throw Error("cannot open prompt file '" + cfg.prompt_file + "'");
    ss << f.rdbuf();
  }
  std::vector<std::string> prompts;
  for (std::string line; std::getline(ss, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();  // CRLF files
    if (!line.empty()) prompts.push_back(line);
  }
  if (prompts.empty()) throw Error("prompt file '" + cfg.prompt_file + "' has no prompts", "write one prompt per line");
  return prompts;
}

// The model's tokenizer comes from where the model does; an HF directory needs its tokenizer files.
Tokenizer load_tokenizer(const GenerateConfig& cfg) {
  if (!cfg.tokenizer.empty()) return Tokenizer::load(cfg.tokenizer);
  std::string path = resolve_model(cfg.model);
  std::error_code ec;
  fs::path dir(path);
  if (fs::is_directory(dir, ec) && !fs::exists(dir / "tokenizer.json", ec) &&
      !fs::exists(dir / "vocab.json", ec) && !fs::exists(dir / "tokenizer.model", ec))
    throw Error("model directory '" + path + "' has no tokenizer.json",
                "export it again with 'bonsai export' (which writes tokenizer.json), or give --tokenizer PATH_OR_NAME");
  return Tokenizer::load(path);
}

// Prompt text -> ids: the chat template when asked, then BOS when the model wants one and lacks it.
std::vector<int32_t> encode_prompt(const Tokenizer& tok, const ChatTemplate* tmpl, const std::string& system,
                                   const std::string& prompt) {
  std::vector<int32_t> ids;
  if (tmpl != nullptr) {
    std::vector<ChatMessage> messages;
    if (!system.empty()) messages.push_back({"system", system});
    messages.push_back({"user", prompt});
    ids = encode_chat(tok, *tmpl, messages, /*add_generation_prompt=*/true).ids;
  } else {
    ids = tok.encode(prompt, /*parse_special=*/true);  // as transformers' tokenizer(text) does
  }
  if (tok.add_bos() && tok.bos_id() >= 0 && (ids.empty() || ids.front() != tok.bos_id()))
    ids.insert(ids.begin(), tok.bos_id());
  if (ids.empty()) throw Error("the prompt '" + prompt + "' encodes to no tokens", "give a non-empty prompt");
  return ids;
}

SamplingParams sampling_params(const GenerateConfig& cfg, const Tokenizer& tok, const ChatTemplate* tmpl) {
  if (cfg.seed < 0) throw Error("key 'seed' must be >= 0, got " + std::to_string(cfg.seed));
  SamplingParams p;
  p.max_tokens = cfg.max_tokens;
  p.temperature = cfg.temperature;
  p.top_k = cfg.top_k;
  p.top_p = cfg.top_p;
  p.min_p = cfg.min_p;
  p.repetition_penalty = cfg.repetition_penalty;
  p.seed = static_cast<uint64_t>(cfg.seed);
  p.stop_strings = cfg.stop;
  // The engine stops at the model config's EOS ids; the tokenizer's EOS and, in chat, the template's
  // end-of-turn token (<|im_end|>, <|eot_id|>) end a reply too.
  if (tok.eos_id() >= 0) p.stop_ids.push_back(tok.eos_id());
  if (tmpl != nullptr) {
    int32_t eot = tok.token_id(tmpl->end_of_turn());
    if (eot >= 0) p.stop_ids.push_back(eot);
  }
  p.validate();
  return p;
}

// Streams one request's text: complete UTF-8 only (StreamDecoder), and never text that may still turn
// out to be the start of a stop string (the engine cuts the result there).
class StreamPrinter {
 public:
  StreamPrinter(const Tokenizer& tok, const std::vector<std::string>& stops) : dec_(tok, true), stops_(stops) {}

  void push(int32_t id) {
    text_ += dec_.push(id);
    emit_until(safe_length());
  }
  // `final_text` is the engine's result (cut before a stop string); prints what is still held back.
  void finish(const std::string& final_text) {
    if (final_text.size() > emitted_ && final_text.compare(0, emitted_, text_, 0, emitted_) == 0) {
      std::fwrite(final_text.data() + emitted_, 1, final_text.size() - emitted_, stdout);
    }
    if (final_text.empty() || final_text.back() != '\n') std::fputc('\n', stdout);
    std::fflush(stdout);
  }

 private:
  size_t safe_length() const {
    size_t limit = text_.size();
    for (const auto& s : stops_) {
      if (s.empty()) continue;
      size_t p = text_.find(s);
      if (p != std::string::npos) limit = std::min(limit, p);
      // A suffix of the text that is a prefix of s may grow into s: hold it back.
      for (size_t k = std::min(s.size() - 1, text_.size()); k > 0; --k)
        if (text_.compare(text_.size() - k, k, s, 0, k) == 0) {
          limit = std::min(limit, text_.size() - k);
          break;
        }
    }
    return limit;
  }
  void emit_until(size_t limit) {
    if (limit <= emitted_) return;
    std::fwrite(text_.data() + emitted_, 1, limit - emitted_, stdout);
    std::fflush(stdout);
    emitted_ = limit;
  }

  StreamDecoder dec_;
  const std::vector<std::string>& stops_;
  std::string text_;
  size_t emitted_ = 0;
};

void print_json(const std::string& prompt, const GenerationResult& r) {
  nlohmann::ordered_json j;
  j["prompt"] = prompt;
  j["token_ids"] = r.tokens;
  j["text"] = r.text;
  j["finish_reason"] = r.finish_reason;
  j["prompt_tokens"] = r.prompt_tokens;
  j["generated_tokens"] = r.tokens.size();
  // A reply cut at max_tokens may end inside a UTF-8 character: U+FFFD there, as Python would.
  std::string line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  std::fwrite(line.data(), 1, line.size(), stdout);
}

void print_stats(const GenerationStats& st, size_t n_requests) {
  // Each request's first token is sampled from its prefill logits; the decode steps make the rest.
  int64_t decoded = st.generated_tokens - static_cast<int64_t>(n_requests);
  auto rate = [](double n, double s) { return s > 0 ? n / s : 0.0; };
  std::fprintf(stderr, "prefill: %lld tokens in %.3f s (%.1f tok/s); decode: %lld tokens in %.3f s (%.1f tok/s, %lld steps)\n",
               static_cast<long long>(st.prompt_tokens), st.prefill_s, rate(st.prompt_tokens, st.prefill_s),
               static_cast<long long>(decoded), st.decode_s, rate(decoded, st.decode_s),
               static_cast<long long>(st.decode_steps));
}

int run_generate(const GenerateConfig& cfg) {
  if (!cfg.system.empty() && !cfg.chat) throw Error("--system applies to chat prompts", "add --chat");
  std::vector<std::string> prompts = read_prompts(cfg);
  Tokenizer tok = load_tokenizer(cfg);
  std::optional<ChatTemplate> tmpl;
  if (cfg.chat) tmpl = ChatTemplate::for_tokenizer(tok);
  const ChatTemplate* tp = tmpl ? &*tmpl : nullptr;
  SamplingParams sp = sampling_params(cfg, tok, tp);
  std::vector<GenerationRequest> requests;
  for (const auto& p : prompts) requests.push_back({encode_prompt(tok, tp, cfg.system, p), sp});

  auto t0 = std::chrono::steady_clock::now();
  Llama model = load_model(cfg.model, parse_dtype(cfg.dtype, "key 'dtype'"));
  if (tok.vocab_size() > model->config().vocab_size)
    throw Error("the tokenizer has " + std::to_string(tok.vocab_size()) + " tokens, the model's vocabulary only " +
                    std::to_string(model->config().vocab_size),
                "the tokenizer does not belong to this model");
  std::fprintf(stderr, "loaded %s [%s] in %.1f s\n", cfg.model.c_str(), cfg.dtype.c_str(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());

  std::unique_ptr<Backend> backend;
  if (cfg.device == "cuda" || (cfg.device == "auto" && cuda::available())) {
    CudaBackendOptions co;  // weights, activations and KV cache in the chosen dtype on the GPU
    co.dtype = parse_dtype(cfg.dtype, "key 'dtype'");
    backend = make_cuda_backend(model, co);
  } else {
    backend = make_torch_backend(model);
  }
  Engine engine(std::move(backend), [&tok](const std::vector<int32_t>& ids) { return tok.decode(ids, true); });
  const bool stream = prompts.size() == 1 && !cfg.json;
  StreamPrinter printer(tok, cfg.stop);
  TokenCallback on_token;
  if (stream) on_token = [&printer](size_t, int32_t id) {
    printer.push(id);
    return true;
  };
  std::vector<GenerationResult> results = engine.generate(requests, on_token);

  for (size_t i = 0; i < results.size(); ++i) {
    if (stream) {
      printer.finish(results[i].text);
    } else if (cfg.json) {
      print_json(prompts[i], results[i]);
    } else {
      std::printf("--- prompt %zu ---\n%s\n", i + 1, results[i].text.c_str());
    }
  }
  std::fflush(stdout);
  print_stats(engine.last_stats(), results.size());
  return 0;
}

}  // namespace

std::unique_ptr<Command> make_generate_command(CLI::App& app) {
  auto cmd = std::make_unique<Command>(app, "generate", "Generate text with a model (plain or chat, streamed or JSON)");
  auto cfg = std::make_shared<GenerateConfig>();
  auto& s = cmd->schema();
  s.add("model", &cfg->model, "HF directory, .gguf file, or a known name (smollm2-135m-instruct)");
  s.add("tokenizer", &cfg->tokenizer, "tokenizer to use instead of the model's own (anything 'data tokenize' reads)");
  s.add("prompt", &cfg->prompt, "the prompt text");
  s.add("prompt_file", &cfg->prompt_file, "file with one prompt per line, generated as one batch ('-' = stdin; blank lines skipped)");
  s.add("chat", &cfg->chat, "wrap the prompt in the model's chat template as a user message");
  s.add("system", &cfg->system, "chat: a system message before the prompt");
  s.add("max_tokens", &cfg->max_tokens, "most tokens to generate per prompt");
  s.add("temperature", &cfg->temperature, "sampling temperature; 0 = greedy");
  s.add("top_k", &cfg->top_k, "keep the k most likely tokens; 0 = off");
  s.add("top_p", &cfg->top_p, "nucleus sampling mass; 1 = off");
  s.add("min_p", &cfg->min_p, "drop tokens below min_p x the top probability; 0 = off");
  s.add("repetition_penalty", &cfg->repetition_penalty, "HF-style penalty on tokens already seen; 1 = off");
  s.add("seed", &cfg->seed, "sampling seed (per prompt; the same seed gives the same text)");
  s.add("stop", &cfg->stop, "stop strings: generation ends at the first, which is cut from the text");
  s.add_choice("dtype", &cfg->dtype, {"f32", "bf16"}, "dtype the weights are computed in");
  s.add_choice("device", &cfg->device, {"cpu", "cuda", "auto"},
               "cpu: the LibTorch backend; cuda: the CUDA backend (fused kernels, CUDA-graph decode); auto: cuda if a GPU is visible");
  s.add("json", &cfg->json, "print one JSON object per prompt: prompt, token_ids, text, finish_reason, prompt_tokens, generated_tokens");
  s.require("model", "give --model PATH_OR_NAME");
  cmd->option("--model,-m", "model", "model directory, .gguf or known name");
  cmd->option("--tokenizer", "tokenizer", "tokenizer instead of the model's own");
  cmd->option("--prompt,-p", "prompt", "prompt text");
  cmd->option("--prompt-file", "prompt_file", "one prompt per line (batched)");
  cmd->flag("--chat", "chat", "use the chat template");
  cmd->option("--system", "system", "chat system message");
  cmd->option("--max-tokens,-n", "max_tokens", "tokens to generate");
  cmd->option("--temperature", "temperature", "0 = greedy");
  cmd->option("--top-k", "top_k", "top-k");
  cmd->option("--top-p", "top_p", "top-p");
  cmd->option("--min-p", "min_p", "min-p");
  cmd->option("--repetition-penalty", "repetition_penalty", "repetition penalty");
  cmd->option("--seed", "seed", "sampling seed");
  cmd->option("--dtype", "dtype", "f32 or bf16");
  cmd->option("--device", "device", "cpu, cuda or auto");
  cmd->flag("--json", "json", "JSON output, one object per prompt");
  // Repeatable, so not a Command::option (one value per flag): its values are added to key 'stop'.
  auto stop_flags = std::make_shared<std::vector<std::string>>();
  cmd->app()
      ->add_option("--stop", *stop_flags, "a stop string; repeat for more  (added to config key: stop)")
      ->expected(1)
      ->allow_extra_args(false)  // one value per --stop: what follows may be a key=value override
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->finish_help();
  cmd->run = [cfg, stop_flags] {
    cfg->stop.insert(cfg->stop.end(), stop_flags->begin(), stop_flags->end());
    return run_generate(*cfg);
  };
  return cmd;
}

}  // namespace bonsai
