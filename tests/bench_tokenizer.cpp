// Tokenizer throughput: bench_tokenizer SPEC FILE [REPEATS] [lines] encodes FILE REPEATS times on
// one thread, as one string or (with "lines") line by line, and prints one JSON object: load time,
// the first (cold word cache) pass and the best of the later passes in MB/s, and the token count.
// scripts/bench/tokenizer_bench.py runs it beside tiktoken and HF tokenizers on the same text.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/tokenizer.h"

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: bench_tokenizer SPEC FILE [REPEATS] [lines]\n");
    return 2;
  }
  try {
    int repeats = argc > 3 ? std::atoi(argv[3]) : 5;
    bool by_line = argc > 4 && std::string(argv[4]) == "lines";
    std::ifstream f(argv[2], std::ios::binary);
    if (!f) throw bonsai::Error(std::string("cannot open '") + argv[2] + "'");
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string text = ss.str();
    std::vector<std::string_view> lines;
    for (size_t pos = 0; pos <= text.size();) {
      size_t nl = text.find('\n', pos);
      if (nl == std::string::npos) nl = text.size();
      lines.emplace_back(text.data() + pos, nl - pos);
      pos = nl + 1;
    }
    auto t0 = std::chrono::steady_clock::now();
    bonsai::Tokenizer tok = bonsai::Tokenizer::load(argv[1]);
    double load_s = seconds_since(t0);
    double first_s = 0, best_s = 1e30;
    size_t tokens = 0;
    for (int r = 0; r < repeats + 1; ++r) {
      auto t = std::chrono::steady_clock::now();
      tokens = 0;
      if (by_line) {
        for (std::string_view line : lines) tokens += tok.encode(line).size();
      } else {
        tokens = tok.encode(text).size();
      }
      double s = seconds_since(t);
      if (r == 0) first_s = s;
      else if (s < best_s) best_s = s;
    }
    double mb = text.size() / 1e6;
    std::printf("{\"spec\": \"%s\", \"bytes\": %zu, \"tokens\": %zu, \"load_s\": %.3f, \"first_pass_mb_s\": %.2f, "
                "\"mb_s\": %.2f, \"repeats\": %d, \"mode\": \"%s\"}\n",
                argv[1], text.size(), tokens, load_s, mb / first_s, repeats > 0 ? mb / best_s : mb / first_s, repeats,
                by_line ? "lines" : "whole");
    return 0;
  } catch (const bonsai::Error& e) {
    std::fprintf(stderr, "bench_tokenizer: error: %s\n", e.what());
    return 1;
  }
}
