// The `bonsai eval` stage (see harness.h): setup, one loop per task kind, results out.
#include "eval/harness.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/strings.h"
#include "data/chat_template.h"
#include "data/loader.h"
#include "data/shards.h"
#include "data/tokenizer.h"
#include "eval/scorer.h"
#include "eval/tasks.h"
#include "model/checkpoint.h"
#include "model/registry.h"
#include "runtime/engine.h"

namespace bonsai::eval {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

double secs_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// A progress bar on stderr: redrawn in place on a terminal, a line every 10% otherwise (logs).
class Progress {
 public:
  Progress(std::string label, int64_t total, bool on)
      : label_(std::move(label)), total_(total), on_(on), tty_(isatty(2) != 0), t0_(Clock::now()) {}
  void advance(int64_t n = 1) {
    done_ += n;
    if (!on_ || total_ <= 0) return;
    int pct = static_cast<int>(100 * done_ / total_);
    if (!tty_ && pct / 10 == last_pct_ / 10 && done_ < total_) return;
    if (tty_ && pct == last_pct_ && done_ < total_ && secs_since(last_draw_) < 0.5) return;
    last_pct_ = pct;
    last_draw_ = Clock::now();
    double el = secs_since(t0_), rate = el > 0 ? done_ / el : 0;
    double eta = rate > 0 ? (total_ - done_) / rate : 0;
    const int width = 30;
    int fill = static_cast<int>(width * done_ / total_);
    std::fprintf(stderr, "%s%s [%s%s] %lld/%lld %.2f/s eta %.0fs%s", tty_ ? "\r" : "", label_.c_str(),
                 std::string(fill, '#').c_str(), std::string(width - fill, '.').c_str(), static_cast<long long>(done_),
                 static_cast<long long>(total_), rate, eta, tty_ ? "" : "\n");
    if (tty_ && done_ >= total_) std::fputc('\n', stderr);
    std::fflush(stderr);
  }

 private:
  std::string label_;
  int64_t total_, done_ = 0;
  bool on_, tty_;
  int last_pct_ = -1;
  Clock::time_point t0_, last_draw_;
};

// Everything a task loop needs: the model, its tokenizer, the chat template if asked for.
struct Setup {
  Llama model{nullptr};
  std::optional<Tokenizer> tok;
  std::optional<ChatTemplate> tmpl;
  bool bos = false;
  int64_t context = 0;  // the model's max_position_embeddings
  double load_s = 0;
};

Tokenizer load_tokenizer(const EvalConfig& cfg) {
  if (!cfg.tokenizer.empty()) return Tokenizer::load(cfg.tokenizer);
  std::string path = resolve_model(cfg.model);
  std::error_code ec;
  fs::path dir(path);
  if (fs::is_directory(dir, ec) && !fs::exists(dir / "tokenizer.json", ec) && !fs::exists(dir / "vocab.json", ec))
    throw Error("model directory '" + path + "' has no tokenizer.json",
                "export it with 'bonsai export' (which writes tokenizer.json), or give --tokenizer PATH_OR_NAME");
  return Tokenizer::load(path);
}

Setup load_setup(const EvalConfig& cfg) {
  Setup s;
  auto t0 = Clock::now();
  s.tok.emplace(load_tokenizer(cfg));
  if (cfg.chat) s.tmpl.emplace(ChatTemplate::for_tokenizer(*s.tok));
  s.model = load_model(cfg.model, parse_dtype(cfg.dtype, "key 'dtype'"));
  s.model->eval();
  s.context = s.model->config().max_position_embeddings;
  if (s.tok->vocab_size() > s.model->config().vocab_size)
    throw Error("the tokenizer has " + std::to_string(s.tok->vocab_size()) + " tokens, the model's vocabulary only " +
                    std::to_string(s.model->config().vocab_size), "the tokenizer does not belong to this model");
  if (cfg.bos == "auto") s.bos = s.tok->add_bos() && s.tok->bos_id() >= 0;
  else s.bos = cfg.bos == "true";
  if (s.bos && s.tok->bos_id() < 0) throw Error("bos=true, but the tokenizer has no BOS token");
  s.load_s = secs_since(t0);
  return s;
}

double stderr_of(double p, int64_t n) { return n > 1 ? std::sqrt(p * (1 - p) / static_cast<double>(n - 1)) : 0.0; }

// The number of items to run: all, or the first `limit` (which must exist).
size_t limited(size_t n, int64_t limit, const std::string& what) {
  if (limit < 0) throw Error("key 'limit' must be >= 0, got " + std::to_string(limit));
  if (limit == 0) return n;
  if (static_cast<size_t>(limit) > n)
    throw Error("--limit " + std::to_string(limit) + " is beyond the data: " + what + " has " + std::to_string(n),
                "use --limit " + std::to_string(n) + " or less (0 = all)");
  return static_cast<size_t>(limit);
}

// ---------------------------------------------------------------- multiple choice

// lm-evaluation-harness's _encode_pair, with the context shared by every choice.
McRequest encode_mc(const Setup& s, std::string ctx, const McQuestion& q) {
  std::vector<std::string> conts;
  for (const auto& c : q.choices) conts.push_back((s.tmpl ? "" : q.delimiter) + c);
  if (s.tmpl) ctx = s.tmpl->render({{"user", ctx}}, /*add_generation_prompt=*/true);
  size_t keep = ctx.find_last_not_of(" \t\n\r\f\v");
  std::string moved = keep == std::string::npos ? ctx : ctx.substr(keep + 1);
  ctx.resize(ctx.size() - moved.size());
  McRequest e;
  e.context = s.tok->encode(ctx, /*parse_special=*/true);
  const size_t n_ctx = e.context.size();  // continuation ids start here in encode(ctx + cont)
  if (s.bos) e.context.insert(e.context.begin(), s.tok->bos_id());
  if (e.context.empty()) {  // lm-eval scores an empty context after the end-of-text token
    int32_t pre = s.tok->bos_id() >= 0 ? s.tok->bos_id() : s.tok->eos_id();
    if (pre < 0) throw Error(q.where + ": the prompt is empty and the tokenizer has no BOS/EOS to start from");
    e.context.push_back(pre);
  }
  for (const auto& c : conts) {
    auto whole = s.tok->encode(ctx + moved + c, true);
    if (whole.size() <= n_ctx)
      throw Error(q.where + ": choice '" + c + "' encodes to no tokens after the context");
    e.continuations.emplace_back(whole.begin() + static_cast<std::ptrdiff_t>(n_ctx), whole.end());
  }
  return e;
}

json run_mc(const EvalConfig& cfg, const std::string& data, json& settings, json& samples_out) {
  McTask task = load_mc_task(cfg.task, data);
  const size_t n = limited(task.questions.size(), cfg.limit, "'" + data + "'");
  const int64_t shots = cfg.shots < 0 ? (cfg.task == "mmlu" ? 5 : 0) : cfg.shots;
  settings["shots"] = shots;
  settings["files"] = task.files;
  Setup s = load_setup(cfg);
  settings["bos"] = s.bos;

  Progress bar(cfg.task, static_cast<int64_t>(n), cfg.progress);
  int64_t correct = 0, correct_norm = 0, tokens = 0;
  std::map<std::string, std::pair<int64_t, int64_t>> groups;  // group -> (questions, correct)
  auto record = [&](size_t i, const McRequest& e, const std::vector<ContinuationScore>& scores) {
    const McQuestion& q = task.questions[i];
    size_t pred = 0, pred_norm = 0;
    std::vector<double> lls, norm;
    for (size_t c = 0; c < scores.size(); ++c) {
      lls.push_back(scores[c].logprob);
      norm.push_back(scores[c].logprob / static_cast<double>(std::max<size_t>(1, q.choices[c].size())));
      if (lls[c] > lls[pred]) pred = c;
      if (norm[c] > norm[pred_norm]) pred_norm = c;
    }
    correct += pred == static_cast<size_t>(q.gold);
    correct_norm += pred_norm == static_cast<size_t>(q.gold);
    if (!q.group.empty()) {
      groups[q.group].first += 1;
      groups[q.group].second += pred == static_cast<size_t>(q.gold);
    }
    if (!cfg.samples.empty()) {
      std::vector<bool> greedy;
      std::vector<int64_t> ntok;
      for (const auto& sc : scores) greedy.push_back(sc.greedy), ntok.push_back(sc.tokens);
      samples_out.push_back({{"index", i}, {"where", q.where}, {"gold", q.gold}, {"pred", pred}, {"pred_norm", pred_norm},
                             {"logprobs", lls}, {"greedy", greedy}, {"continuation_tokens", ntok},
                             {"context_tokens", e.context.size()}});
    }
  };
  auto t0 = Clock::now();
  std::vector<McRequest> batch;
  std::vector<size_t> batch_index;
  int64_t batch_len = 0;
  auto flush = [&] {
    if (batch.empty()) return;
    auto scores = score_requests(s.model, batch);
    for (size_t b = 0; b < batch.size(); ++b) record(batch_index[b], batch[b], scores[b]);
    bar.advance(static_cast<int64_t>(batch.size()));
    batch.clear();
    batch_index.clear();
    batch_len = 0;
  };
  for (size_t i = 0; i < n; ++i) {
    const McQuestion& q = task.questions[i];
    McRequest e = encode_mc(s, mc_context(task, i, shots, static_cast<uint64_t>(cfg.seed)), q);
    size_t longest = 0;
    int64_t len = static_cast<int64_t>(e.context.size());
    for (const auto& c : e.continuations) longest = std::max(longest, c.size()), len += static_cast<int64_t>(c.size()) - 1;
    if (static_cast<int64_t>(e.context.size() + longest) > s.context)
      throw Error(q.where + ": the prompt is " + std::to_string(e.context.size() + longest) + " tokens (context " +
                      std::to_string(e.context.size()) + " + longest choice " + std::to_string(longest) +
                      "), longer than the model's context of " + std::to_string(s.context),
                  "use fewer --shots, or a model with a longer context");
    if (batch_len > 0 && batch_len + len > cfg.batch_tokens) flush();
    tokens += len;
    batch_len += len;
    batch.push_back(std::move(e));
    batch_index.push_back(i);
  }
  flush();
  const double eval_s = secs_since(t0);
  json m;
  double acc = static_cast<double>(correct) / n, acc_norm = static_cast<double>(correct_norm) / n;
  m["acc"] = acc;
  m["acc_stderr"] = stderr_of(acc, n);
  m["acc_norm"] = acc_norm;
  m["acc_norm_stderr"] = stderr_of(acc_norm, n);
  m["samples"] = n;
  if (!groups.empty()) {
    json g;
    for (const auto& [name, v] : groups) g[name] = {{"acc", static_cast<double>(v.second) / v.first}, {"samples", v.first}};
    m["groups"] = g;
  }
  m["timing"] = {{"load_s", s.load_s}, {"eval_s", eval_s}, {"items_per_s", n / std::max(eval_s, 1e-9)},
                 {"tokens", tokens}, {"batch_tokens", cfg.batch_tokens}};
  return m;
}

// ---------------------------------------------------------------- GSM8K through the engine

std::string gsm_query(const GsmQuestion& q) { return "Question: " + q.question + "\nAnswer:"; }

std::vector<int32_t> gsm_prompt(const Setup& s, const GsmTask& t, size_t i, int64_t shots, const std::string& system) {
  std::vector<int32_t> ids;
  if (s.tmpl) {  // lm-eval --apply_chat_template --fewshot_as_multiturn
    std::vector<ChatMessage> msgs;
    if (!system.empty()) msgs.push_back({"system", system});
    for (int64_t k = 0; k < shots; ++k) {
      msgs.push_back({"user", gsm_query(t.train[k])});
      msgs.push_back({"assistant", t.train[k].answer});
    }
    msgs.push_back({"user", gsm_query(t.questions[i])});
    ids = encode_chat(*s.tok, *s.tmpl, msgs, true).ids;
  } else {
    std::string text;
    for (int64_t k = 0; k < shots; ++k) text += gsm_query(t.train[k]) + " " + t.train[k].answer + "\n\n";
    ids = s.tok->encode(text + gsm_query(t.questions[i]), true);
  }
  if (s.bos && (ids.empty() || ids.front() != s.tok->bos_id())) ids.insert(ids.begin(), s.tok->bos_id());
  return ids;
}

json run_gsm8k(const EvalConfig& cfg, const std::string& data, json& settings, json& samples_out) {
  GsmTask task = load_gsm8k(data);
  const size_t n = limited(task.questions.size(), cfg.limit, "'" + data + "'");
  const int64_t shots = cfg.shots < 0 ? 5 : cfg.shots;
  if (shots > static_cast<int64_t>(task.train.size()))
    throw Error("gsm8k: " + std::to_string(shots) + " shots asked, but " + std::to_string(task.train.size()) +
                    " exemplars found (train.jsonl beside '" + data + "')", "lower --shots, or put train.jsonl beside the test file");
  if (cfg.batch_size < 1) throw Error("key 'batch_size' must be >= 1");
  settings["shots"] = shots;
  settings["files"] = task.files;
  Setup s = load_setup(cfg);
  settings["bos"] = s.bos;

  SamplingParams sp;  // greedy, as lm-eval's gsm8k
  sp.max_tokens = cfg.max_tokens;
  sp.stop_strings = {"Question:", "</s>", "<|im_end|>"};
  if (s.tok->eos_id() >= 0) sp.stop_ids.push_back(s.tok->eos_id());
  if (s.tmpl) {
    int32_t eot = s.tok->token_id(s.tmpl->end_of_turn());
    if (eot >= 0) sp.stop_ids.push_back(eot);
  }
  const Tokenizer& tok = *s.tok;
  Engine engine(make_torch_backend(s.model), [&tok](const std::vector<int32_t>& ids) { return tok.decode(ids, true); });

  Progress bar("gsm8k", static_cast<int64_t>(n), cfg.progress);
  int64_t flexible = 0, strict = 0, generated = 0;
  auto t0 = Clock::now();
  for (size_t b = 0; b < n; b += static_cast<size_t>(cfg.batch_size)) {
    size_t e = std::min(n, b + static_cast<size_t>(cfg.batch_size));
    std::vector<GenerationRequest> reqs;
    for (size_t i = b; i < e; ++i) {
      auto ids = gsm_prompt(s, task, i, shots, cfg.system);
      if (static_cast<int64_t>(ids.size()) + cfg.max_tokens > s.context)
        throw Error(task.questions[i].where + ": the prompt is " + std::to_string(ids.size()) + " tokens; with max_tokens " +
                        std::to_string(cfg.max_tokens) + " it exceeds the model's context of " + std::to_string(s.context),
                    "use fewer --shots or a smaller max_tokens");
      reqs.push_back({std::move(ids), sp});
    }
    auto results = engine.generate(reqs);
    for (size_t i = b; i < e; ++i) {
      const auto& r = results[i - b];
      const auto& q = task.questions[i];
      std::string flex = extract_gsm_answer(r.text), st = extract_gsm_answer(r.text, true);
      flexible += flex == q.target;
      strict += st == q.target;
      generated += static_cast<int64_t>(r.tokens.size());
      if (!cfg.samples.empty())
        samples_out.push_back({{"index", i}, {"where", q.where}, {"target", q.target}, {"extracted", flex},
                               {"strict", st}, {"correct", flex == q.target}, {"finish_reason", r.finish_reason},
                               {"prompt_tokens", r.prompt_tokens}, {"text", r.text}});
    }
    bar.advance(static_cast<int64_t>(e - b));
  }
  const double eval_s = secs_since(t0);
  json m;
  double em = static_cast<double>(flexible) / n, sm = static_cast<double>(strict) / n;
  m["exact_match"] = em;
  m["exact_match_stderr"] = stderr_of(em, n);
  m["strict_match"] = sm;
  m["samples"] = n;
  m["timing"] = {{"load_s", s.load_s}, {"eval_s", eval_s}, {"items_per_s", n / std::max(eval_s, 1e-9)},
                 {"generated_tokens", generated}};
  return m;
}

// ---------------------------------------------------------------- perplexity

// The token stream: a text file encoded as one document, or every shard of a token pack.
std::vector<int32_t> perplexity_tokens(const Setup& s, const std::string& data, json& settings) {
  bool shards = fs::is_directory(data) || (data.size() > 3 && data.compare(data.size() - 3, 3, ".h5") == 0);
  std::vector<int32_t> ids;
  if (shards) {
    for (const auto& path : resolve_shard_paths(data)) {
      ShardReader r(path);
      if (r.info().tokenizer_identity != s.tok->identity())
        throw Error("shard '" + path + "' was packed with another tokenizer (" + r.info().tokenizer_name + ", " +
                        r.info().tokenizer_spec + ") than this model's", "pack the text with the model's tokenizer, or give --tokenizer");
      std::vector<int32_t> part(r.n_tokens());
      r.read_tokens(0, part.size(), part.data());
      ids.insert(ids.end(), part.begin(), part.end());
    }
    settings["format"] = "shards";
  } else {
    ids = s.tok->encode(read_text_file(data), /*parse_special=*/false);
    settings["format"] = "text";
  }
  if (s.bos) ids.insert(ids.begin(), s.tok->bos_id());
  return ids;
}

json run_perplexity(const EvalConfig& cfg, const std::string& data, json& settings, json& samples_out) {
  if (data.empty()) throw Error("task perplexity needs --data (a text file or HDF5 token shards)");
  Setup s = load_setup(cfg);
  settings["bos"] = s.bos;
  std::vector<int32_t> ids = perplexity_tokens(s, data, settings);
  if (cfg.limit > 0) ids.resize(limited(ids.size(), cfg.limit, "'" + data + "' (in tokens)"));
  const int64_t W = cfg.window > 0 ? cfg.window : std::min<int64_t>(s.context, 2048);
  const int64_t stride = cfg.stride > 0 ? cfg.stride : std::max<int64_t>(1, W / 2);
  if (W > s.context)
    throw Error("perplexity window " + std::to_string(W) + " is longer than the model's context of " + std::to_string(s.context),
                "use window=" + std::to_string(s.context) + " or less");
  if (stride > W) throw Error("stride " + std::to_string(stride) + " is larger than the window " + std::to_string(W), "stride <= window");
  const int64_t N = static_cast<int64_t>(ids.size());
  if (N < 2) throw Error("'" + data + "' has " + std::to_string(N) + " tokens; perplexity needs at least 2");
  settings["window"] = W;
  settings["stride"] = stride;

  // Hugging Face's windows: begin every `stride`; each scores the tokens after the previous end.
  std::vector<std::pair<int64_t, int64_t>> windows;  // (begin, end)
  for (int64_t begin = 0, prev_end = 0;; begin += stride) {
    int64_t end = std::min(begin + W, N);
    windows.emplace_back(begin, prev_end);
    prev_end = end;
    if (end == N) break;
  }
  Progress bar("perplexity", static_cast<int64_t>(windows.size()), cfg.progress);
  double nll = 0;
  int64_t tokens = 0, bytes = 0;
  auto t0 = Clock::now();
  for (auto [begin, prev_end] : windows) {
    int64_t end = std::min(begin + W, N);
    std::vector<int32_t> win(ids.begin() + begin, ids.begin() + end);
    int64_t first = std::max<int64_t>(1, prev_end - begin);  // window-relative first target
    WindowScore w = score_window(s.model, win, first);
    nll += w.nll;
    tokens += w.tokens;
    for (int64_t t = begin + first; t < end; ++t) bytes += static_cast<int64_t>(s.tok->token_bytes(ids[t]).size());
    if (!cfg.samples.empty())
      samples_out.push_back({{"begin", begin}, {"end", end}, {"first_target", begin + first}, {"nll", w.nll}, {"tokens", w.tokens}});
    bar.advance();
  }
  const double eval_s = secs_since(t0);
  json m;
  m["perplexity"] = std::exp(nll / tokens);
  m["nll_per_token"] = nll / tokens;
  m["bits_per_byte"] = bytes > 0 ? nll / std::log(2.0) / bytes : 0.0;
  m["nll_sum"] = nll;
  m["tokens"] = tokens;
  m["bytes"] = bytes;
  m["windows"] = windows.size();
  m["samples"] = tokens;
  m["timing"] = {{"load_s", s.load_s}, {"eval_s", eval_s}, {"tokens_per_s", tokens / std::max(eval_s, 1e-9)}};
  return m;
}

void write_samples(const std::string& path, const json& samples) {
  std::string out;
  for (const auto& r : samples) out += r.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  write_file_atomic(path, out);
}

}  // namespace

json run_eval(const EvalConfig& cfg) {
  const auto& names = task_names();
  if (std::find(names.begin(), names.end(), cfg.task) == names.end()) {
    std::string near = nearest(cfg.task, names);
    throw Error("unknown task '" + cfg.task + "'" + (near.empty() ? "" : "; did you mean '" + near + "'?"),
                "tasks: " + join(names, ", "));
  }
  std::string data = cfg.data.empty() ? default_data_path(cfg.task, cfg.shared_data) : cfg.data;
  if (data.empty())
    throw Error("task " + cfg.task + " needs --data", cfg.task == "mmlu" ? "give the MMLU folder (test/ and dev/ with SUBJECT_test.csv, SUBJECT_dev.csv)"
                                                                         : "give --data PATH (see 'bonsai eval --help')");
  if (!fs::exists(data))
    throw Error("task " + cfg.task + ": no data at '" + data + "'", "give --data PATH (the default is under ../shared/data/eval)");
  if (cfg.threads > 0) torch::set_num_threads(static_cast<int>(cfg.threads));

  json settings;
  settings["model"] = cfg.model;
  settings["model_path"] = resolve_model(cfg.model);
  settings["task"] = cfg.task;
  settings["data"] = data;
  settings["limit"] = cfg.limit;
  settings["chat"] = cfg.chat;
  settings["dtype"] = cfg.dtype;
  settings["seed"] = cfg.seed;
  settings["threads"] = torch::get_num_threads();
  json samples = json::array(), metrics;
  if (is_mc_task(cfg.task)) metrics = run_mc(cfg, data, settings, samples);
  else if (cfg.task == "gsm8k") metrics = run_gsm8k(cfg, data, settings, samples);
  else metrics = run_perplexity(cfg, data, settings, samples);
  if (cfg.task == "gsm8k") settings["max_tokens"] = cfg.max_tokens;

  json doc;
  doc["results"][cfg.task] = metrics;
  doc["settings"] = settings;
  if (!cfg.output.empty()) {
    write_file_atomic(cfg.output, doc.dump(2) + "\n");
    fs::path md = fs::path(cfg.output).replace_extension(".md");
    write_file_atomic(md.string(), results_markdown(doc));
  }
  if (!cfg.samples.empty()) write_samples(cfg.samples, samples);
  return doc;
}

std::string results_markdown(const json& doc) {
  std::string out = "| task | metric | value | stderr | n |\n|---|---|---|---|---|\n";
  char buf[256];
  for (const auto& [task, m] : doc["results"].items()) {
    for (const auto& [key, v] : m.items()) {
      if (!v.is_number_float() || (key.size() > 7 && key.compare(key.size() - 7, 7, "_stderr") == 0)) continue;
      if (key == "nll_sum") continue;
      std::string se = m.contains(key + "_stderr") ? std::to_string(m[key + "_stderr"].get<double>()).substr(0, 6) : "";
      std::snprintf(buf, sizeof buf, "| %s | %s | %.4f | %s | %lld |\n", task.c_str(), key.c_str(), v.get<double>(),
                    se.c_str(), static_cast<long long>(m["samples"].get<int64_t>()));
      out += buf;
    }
    if (m.contains("groups"))
      for (const auto& [g, gv] : m["groups"].items()) {
        std::snprintf(buf, sizeof buf, "| %s/%s | acc | %.4f | | %lld |\n", task.c_str(), g.c_str(), gv["acc"].get<double>(),
                      static_cast<long long>(gv["samples"].get<int64_t>()));
        out += buf;
      }
  }
  const auto& s = doc["settings"];
  out += "\nmodel `" + s["model"].get<std::string>() + "`, data `" + s["data"].get<std::string>() + "`";
  if (s.contains("shots")) out += ", " + std::to_string(s["shots"].get<int64_t>()) + "-shot";
  if (s["chat"].get<bool>()) out += ", chat template";
  out += "\n";
  return out;
}

}  // namespace bonsai::eval
