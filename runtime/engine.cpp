#include "runtime/engine.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"

namespace bonsai {
namespace {

using Clock = std::chrono::steady_clock;

struct Live {
  size_t index;                  // request index == KV-cache slot
  std::vector<int32_t> history;  // prompt + generated
  Sampler sampler;
  std::vector<int32_t> stop_ids;
  int64_t prompt_len;
  bool done = false;
};

double secs(Clock::time_point a) { return std::chrono::duration<double>(Clock::now() - a).count(); }

}  // namespace

Engine::Engine(std::unique_ptr<Backend> backend, Detokenizer detok)
    : backend_(std::move(backend)), detok_(std::move(detok)) {}

std::vector<GenerationResult> Engine::generate(const std::vector<GenerationRequest>& reqs,
                                               const TokenCallback& on_token) {
  stats_ = {};
  const auto& cfg = backend_->config();
  int64_t need = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    const auto& r = reqs[i];
    r.sampling.validate();
    if (r.prompt.empty()) throw Error("generate: request " + std::to_string(i) + " has an empty prompt");
    for (int32_t id : r.prompt)
      if (id < 0 || id >= cfg.vocab_size)
        throw Error("generate: request " + std::to_string(i) + " has token id " + std::to_string(id) +
                    " outside the vocabulary [0, " + std::to_string(cfg.vocab_size) + ")");
    int64_t len = static_cast<int64_t>(r.prompt.size()) + r.sampling.max_tokens;
    if (static_cast<int64_t>(r.prompt.size()) >= cfg.max_position_embeddings)
      throw Error("generate: request " + std::to_string(i) + " has a " + std::to_string(r.prompt.size()) +
                  "-token prompt; the model's context is " + std::to_string(cfg.max_position_embeddings),
                  "shorten the prompt");
    need = std::max(need, std::min(len, cfg.max_position_embeddings));
  }
  backend_->reserve(static_cast<int64_t>(reqs.size()), need);

  std::vector<GenerationResult> results(reqs.size());
  std::vector<Live> live;
  for (size_t i = 0; i < reqs.size(); ++i) {
    Live l{i, reqs[i].prompt, Sampler(reqs[i].sampling), reqs[i].sampling.stop_ids,
           static_cast<int64_t>(reqs[i].prompt.size())};
    if (!reqs[i].sampling.ignore_eos)
      for (auto id : cfg.eos_token_id) l.stop_ids.push_back(static_cast<int32_t>(id));
    results[i].prompt_tokens = l.prompt_len;
    live.push_back(std::move(l));
  }

  // Appends `tok` to sequence `l`, and decides whether it has finished.
  auto accept = [&](Live& l, int32_t tok) {
    auto& res = results[l.index];
    const auto& sp = reqs[l.index].sampling;
    l.history.push_back(tok);
    res.tokens.push_back(tok);
    ++stats_.generated_tokens;
    bool keep = !on_token || on_token(l.index, tok);
    if (!keep) l.done = true, res.finish_reason = "cancelled";
    if (std::find(l.stop_ids.begin(), l.stop_ids.end(), tok) != l.stop_ids.end()) l.done = true, res.finish_reason = "stop";
    if (detok_ && !sp.stop_strings.empty() && !l.done) {
      std::string text = detok_(res.tokens);
      for (const auto& s : sp.stop_strings)
        if (!s.empty() && text.find(s) != std::string::npos) l.done = true, res.finish_reason = "stop";
    }
    if (!l.done && (static_cast<int64_t>(res.tokens.size()) >= sp.max_tokens ||
                    static_cast<int64_t>(l.history.size()) >= backend_->max_seq()))
      l.done = true, res.finish_reason = "length";
  };

  auto t0 = Clock::now();
  for (auto& l : live) {  // prefill, one prompt at a time
    auto ids = torch::tensor(std::vector<int64_t>(l.history.begin(), l.history.end()), torch::kLong).unsqueeze(0);
    torch::Tensor logits = backend_->step(ids, {static_cast<int64_t>(l.index)}, {0});
    stats_.prompt_tokens += l.prompt_len;
    accept(l, l.sampler.sample(logits[0], l.history));
  }
  stats_.prefill_s = secs(t0);

  t0 = Clock::now();
  for (;;) {  // decode all live sequences together
    std::vector<int64_t> last, slots, start;
    std::vector<Live*> batch;
    for (auto& l : live) {
      if (l.done) continue;
      batch.push_back(&l);
      last.push_back(l.history.back());
      slots.push_back(static_cast<int64_t>(l.index));
      start.push_back(static_cast<int64_t>(l.history.size()) - 1);
    }
    if (batch.empty()) break;
    torch::Tensor logits = backend_->step(torch::tensor(last, torch::kLong).unsqueeze(1), slots, start);
    ++stats_.decode_steps;
    for (size_t b = 0; b < batch.size(); ++b) accept(*batch[b], batch[b]->sampler.sample(logits[b], batch[b]->history));
  }
  stats_.decode_s = secs(t0);

  if (detok_) {
    for (size_t i = 0; i < results.size(); ++i) {
      auto& r = results[i];
      r.text = detok_(r.tokens);
      for (const auto& s : reqs[i].sampling.stop_strings) {
        auto p = s.empty() ? std::string::npos : r.text.find(s);
        if (p != std::string::npos) r.text.resize(p);
      }
    }
  }
  return results;
}

}  // namespace bonsai
