#include "distill/precompute.h"

#include <chrono>
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/loader.h"
#include "data/tokenizer.h"
#include "distill/kd_loss.h"
#include "distill/topk_store.h"
#include "model/checkpoint.h"
#include "model/registry.h"

namespace bonsai {

std::string describe_data(uint64_t n_samples, uint64_t total_tokens, int64_t seq_len) {
  return nlohmann::json{{"samples", n_samples}, {"tokens", total_tokens}, {"seq_len", seq_len}}.dump();
}

void PrecomputeConfig::register_keys(ConfigSchema& s) {
  s.add("teacher.model", &teacher, "the teacher (HF dir, GGUF or known name)");
  s.add_choice("teacher.dtype", &teacher_dtype, {"f32", "bf16"}, "teacher compute dtype");
  s.add("data.train", &data, "training data (bonsai data pack outputs), as the training run will read it");
  s.add("data.tokenizer", &tokenizer, "tokenizer spec the shards must match (default: the teacher)");
  s.add("train.seq_len", &seq_len, "sequence length; must equal the training run's");
  s.add("batch", &batch, "sequences per teacher forward");
  s.add("topk.k", &k, "logits kept per token");
  s.add("loss.temperature", &temperature, "temperature; must equal the training run's");
  s.add("topk.max_samples", &max_samples, "stop after this many samples (0 = one full epoch)");
  s.add("output", &output, "output directory (writes topk.h5)");
  s.require("teacher.model", "give teacher.model=PATH");
  s.require("data.train", "give data.train=[DIR]");
  s.require("output", "give --output DIR");
}

int run_precompute(const PrecomputeConfig& c) {
  if (c.k <= 0 || c.seq_len <= 0 || c.batch <= 0 || c.temperature <= 0)
    throw Error("precompute: topk.k, train.seq_len, batch and loss.temperature must be positive");
  auto t0 = std::chrono::steady_clock::now();
  Llama teacher = load_model(c.teacher, parse_dtype(c.teacher_dtype, "key 'teacher.dtype'"));
  Tokenizer tok = Tokenizer::load(c.tokenizer.empty() ? resolve_model(c.teacher) : c.tokenizer);
  LoaderOptions lo;
  lo.data = c.data;
  lo.tokenizer_identity = tok.identity();
  lo.batch_size = c.batch;
  lo.seq_len = c.seq_len;
  lo.shuffle = false;
  lo.drop_last = false;
  lo.epochs = 1;
  Loader loader(lo);
  const uint64_t n = c.max_samples > 0 ? std::min<uint64_t>(c.max_samples, loader.num_samples()) : loader.num_samples();
  if (c.k > teacher->config().vocab_size) throw Error("precompute: topk.k is larger than the vocabulary");
  TopKMeta meta{c.teacher, tok.identity(), describe_data(loader.num_samples(), loader.total_tokens(), c.seq_len),
                c.temperature, c.k, c.seq_len, static_cast<int64_t>(n)};
  std::filesystem::create_directories(c.output);
  TopKWriter out(c.output + "/topk.h5", meta);
  torch::NoGradGuard ng;
  uint64_t done = 0;
  double last_report = 0;
  while (done < n) {
    auto b = loader.next();
    if (!b) break;
    auto tokens = torch::tensor(b->tokens, torch::kInt).to(torch::kLong).view({b->B, b->T + 1}).narrow(1, 0, b->T);
    ForwardOptions fo;
    fo.compute_logits = false;
    torch::Tensor h = teacher->forward(tokens, fo).last_hidden;  // (B,T,C)
    for (int64_t r = 0; r < b->B && done < n; ++r) {
      // One row's logits at a time: (T,V) fp32 is the largest tensor alive.
      torch::Tensor logits = torch::matmul(h[r], teacher->output_weight().t()).to(torch::kFloat);
      TopKTeacher t = topk_from_logits(logits, c.k, c.temperature);
      auto v16 = t.values.to(torch::kHalf).contiguous();
      auto idx = t.indices.to(torch::kInt).contiguous();
      auto lse = t.lse.contiguous();
      out.write(b->sample_ids[r], reinterpret_cast<const uint16_t*>(v16.data_ptr<at::Half>()),
                reinterpret_cast<const uint32_t*>(idx.data_ptr<int32_t>()), lse.data_ptr<float>());
      ++done;
    }
    double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (el - last_report > 5 || done == n) {  // at most every 5 s: logs of long runs stay readable
      last_report = el;
      std::fprintf(stderr, "precompute: %lu/%lu samples, %.0f s\n", static_cast<unsigned long>(done),
                   static_cast<unsigned long>(n), el);
    }
  }
  out.commit();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "precompute: %lu samples x %ld tokens, top-%ld at T=%.2f -> %s/topk.h5 (%ld bytes/token) in %.1f s\n",
               static_cast<unsigned long>(done), static_cast<long>(c.seq_len), static_cast<long>(c.k), c.temperature,
               c.output.c_str(), static_cast<long>(6 * c.k + 4), secs);
  return 0;
}

}  // namespace bonsai
