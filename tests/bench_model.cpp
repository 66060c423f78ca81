// bonsai_bench: timings for BENCHMARKS.md (not a test; scripts/bench/*.sh run it beside the Python peers).
//   bonsai_bench load PATH [--repeat N]              mmap load, then load + read every byte
//   bonsai_bench forward MODEL [--tokens T] [--dtype f32|bf16] [--repeat N]
// Prints one JSON object per line: {"what":..., "median_s":..., ...}.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/process.h"
#include "model/checkpoint.h"
#include "runtime/engine.h"

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::string arg(int argc, char** argv, const std::string& name, const std::string& def) {
  for (int i = 1; i + 1 < argc; ++i)
    if (argv[i] == name) return argv[i + 1];
  return def;
}

// Reads one byte per 4 KiB page of every tensor, so the mmap'ed data is really in memory.
uint64_t touch(const std::map<std::string, torch::Tensor>& tensors) {
  uint64_t sum = 0;
  for (const auto& [name, t] : tensors) {
    auto* p = static_cast<const volatile uint8_t*>(t.data_ptr());
    for (int64_t i = 0; i < static_cast<int64_t>(t.nbytes()); i += 4096) sum += p[i];
  }
  return sum;
}

int bench_load(const std::string& path, int repeat) {
  std::vector<double> open_s, full_s;
  uint64_t bytes = 0, check = 0;
  for (int r = 0; r < repeat; ++r) {
    auto t0 = Clock::now();
    auto ck = bonsai::load_checkpoint(path);
    auto t1 = Clock::now();
    check += touch(ck.tensors);
    auto t2 = Clock::now();
    bytes = 0;
    for (const auto& [n, t] : ck.tensors) bytes += t.nbytes();
    open_s.push_back(std::chrono::duration<double>(t1 - t0).count());
    full_s.push_back(std::chrono::duration<double>(t2 - t0).count());
  }
  std::printf("{\"what\":\"bonsai load (mmap, lazy)\",\"median_s\":%.4f,\"bytes\":%llu}\n", median(open_s),
              static_cast<unsigned long long>(bytes));
  std::printf("{\"what\":\"bonsai load + read every page\",\"median_s\":%.4f,\"bytes\":%llu,\"check\":%llu}\n",
              median(full_s), static_cast<unsigned long long>(bytes), static_cast<unsigned long long>(check % 7));
  return 0;
}

int bench_forward(const std::string& model_path, int64_t T, const std::string& dtype, int repeat) {
  auto type = bonsai::parse_dtype(dtype, "--dtype");
  auto model = bonsai::load_model(model_path, type);
  torch::NoGradGuard ng;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(0);
  auto ids = torch::randint(0, model->config().vocab_size, {1, T}, gen, torch::kLong);
  model->forward(ids);  // warm-up
  std::vector<double> s;
  for (int r = 0; r < repeat; ++r) {
    auto t0 = Clock::now();
    auto out = model->forward(ids);
    (void)out.logits.sum().item<float>();
    s.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::printf("{\"what\":\"bonsai forward\",\"tokens\":%ld,\"dtype\":\"%s\",\"threads\":%d,\"median_s\":%.4f,\"tokens_per_s\":%.1f}\n",
              static_cast<long>(T), dtype.c_str(), at::get_num_threads(), median(s), T / median(s));
  return 0;
}

// Decode throughput through the runtime: `batch` sequences of a 16-token prompt, `n` new tokens each
// (greedy, EOS ignored). Prefill is timed separately; weights bytes read per decode step give GB/s.
int bench_decode(const std::string& model_path, int64_t batch, int64_t n, const std::string& dtype, int64_t prompt_len) {
  auto model = bonsai::load_model(model_path, bonsai::parse_dtype(dtype, "--dtype"));
  int64_t weight_bytes = 0;
  for (const auto& p : model->parameters()) weight_bytes += p.nbytes();
  bonsai::Engine engine(bonsai::make_torch_backend(model));
  std::vector<bonsai::GenerationRequest> reqs;
  for (int64_t b = 0; b < batch; ++b) {
    bonsai::GenerationRequest r;
    for (int64_t i = 0; i < prompt_len; ++i) r.prompt.push_back(static_cast<int32_t>((17 * (i + 1) + 31 * b) % 1000 + 100));
    r.sampling.max_tokens = n;
    r.sampling.ignore_eos = true;
    reqs.push_back(r);
  }
  engine.generate({reqs[0]});  // warm-up
  engine.generate(reqs);
  const auto& st = engine.last_stats();
  double decode_tps = (st.generated_tokens - batch) / st.decode_s;  // the first token comes from prefill
  double steps_per_s = st.decode_steps / st.decode_s;
  std::printf("{\"what\":\"bonsai decode\",\"dtype\":\"%s\",\"batch\":%ld,\"threads\":%d,\"decode_tokens_per_s\":%.1f,"
              "\"prefill_tokens_per_s\":%.1f,\"weights_gb_per_s\":%.2f}\n",
              dtype.c_str(), static_cast<long>(batch), at::get_num_threads(), decode_tps, st.prompt_tokens / st.prefill_s,
              steps_per_s * weight_bytes / 1e9);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: bonsai_bench load PATH [--repeat N] | forward MODEL [--tokens T] [--dtype f32|bf16] [--repeat N]\n");
    return 2;
  }
  bonsai::configure_allocator();
  try {
    std::string what = argv[1];
    int repeat = std::stoi(arg(argc, argv, "--repeat", "5"));
    if (what == "load") return bench_load(argv[2], repeat);
    if (what == "decode")
      return bench_decode(argv[2], std::stoll(arg(argc, argv, "--batch", "1")), std::stoll(arg(argc, argv, "--tokens", "64")),
                          arg(argc, argv, "--dtype", "f32"), std::stoll(arg(argc, argv, "--prompt", "16")));
    if (what == "forward")
      return bench_forward(argv[2], std::stoll(arg(argc, argv, "--tokens", "512")), arg(argc, argv, "--dtype", "f32"), repeat);
    std::fprintf(stderr, "unknown benchmark '%s'\n", what.c_str());
    return 2;
  } catch (const bonsai::Error& e) {
    std::fprintf(stderr, "bonsai_bench: error: %s\n", e.what());
    return 1;
  }
}
