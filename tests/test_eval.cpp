// bonsai eval: task readers (every form, every malformed-file error with file:line), MMLU on a
// hand-written CSV fixture this test writes, GSM8K answer extraction, and the packed shared-context
// scorer against the model's plain forward on a tiny random Llama (odd lengths, GQA, several
// questions in one pack). Agreement with transformers is checked by scripts/ref/eval_ref.py (CTest
// eval.*_matches_transformers).
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "eval/scorer.h"
#include "eval/tasks.h"
#include "test_util.h"

namespace bonsai::eval {
namespace {

namespace fs = std::filesystem;
using bonsai::test::error_of;

void write(const fs::path& p, const std::string& s) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << s;
}

// ---- MMLU: a hand-written fixture in Hendrycks' CSV form ------------------------------------
fs::path write_mmlu(const std::string& name) {
  fs::path d = bonsai::test::scratch_dir(name);
  // A quoted question with a comma, a doubled quote and a line break; CRLF on one row.
  write(d / "test" / "high_school_physics_test.csv",
        "\"A ball, dropped from rest, falls for 2 s. Its \"\"speed\"\"\nis about\",5 m/s,10 m/s,20 m/s,40 m/s,C\r\n"
        "What is the SI unit of force?,joule,newton,watt,pascal,B\n");
  write(d / "test" / "anatomy_test.csv", "Which organ pumps blood?,lung,liver,heart,kidney,C\n");
  std::string dev;
  for (int i = 0; i < 5; ++i)
    dev += "Dev question " + std::to_string(i) + "?,a" + std::to_string(i) + ",b,c,d," + std::string(1, "ABCDA"[i]) + "\n";
  write(d / "dev" / "high_school_physics_dev.csv", dev);
  write(d / "dev" / "anatomy_dev.csv", dev);
  return d;
}

TEST(EvalTasks, MmluCsvForm) {
  fs::path d = write_mmlu("mmlu_ok");
  McTask t = load_mc_task("mmlu", d.string());
  ASSERT_EQ(t.questions.size(), 3u);  // anatomy (1) then high_school_physics (2): sorted by file
  EXPECT_EQ(t.questions[0].group, "anatomy");
  EXPECT_EQ(t.questions[1].query,
            "A ball, dropped from rest, falls for 2 s. Its \"speed\"\nis about\nA. 5 m/s\nB. 10 m/s\nC. 20 m/s\nD. 40 m/s\nAnswer:");
  EXPECT_EQ(t.questions[1].gold, 2);
  EXPECT_EQ(t.questions[2].gold, 1);
  EXPECT_EQ(t.questions[2].where, (d / "test" / "high_school_physics_test.csv").string() + ":3");
  EXPECT_EQ(t.questions[1].choices, (std::vector<std::string>{"A", "B", "C", "D"}));
  EXPECT_EQ(t.fewshot_pool.size(), 10u);
  // 5-shot: the subject's description, its first five dev examples, then the question.
  std::string ctx = mc_context(t, 0, 5, 1234);
  std::string want = "The following are multiple choice questions (with answers) about anatomy.\n\n";
  for (int i = 0; i < 5; ++i)
    want += "Dev question " + std::to_string(i) + "?\nA. a" + std::to_string(i) + "\nB. b\nC. c\nD. d\nAnswer: " +
            std::string(1, "ABCDA"[i]) + "\n\n";
  EXPECT_EQ(ctx, want + "Which organ pumps blood?\nA. lung\nB. liver\nC. heart\nD. kidney\nAnswer:");
  EXPECT_NE(error_of([&] { mc_context(t, 0, 6, 1234); }).find("6 shots asked, the few-shot pool of 'anatomy' has 5"),
            std::string::npos);
  // One test file alone: its dev file is found in ../dev.
  McTask one = load_mc_task("mmlu", (d / "test" / "anatomy_test.csv").string());
  EXPECT_EQ(one.questions.size(), 1u);
  EXPECT_EQ(one.fewshot_pool.size(), 5u);
}

TEST(EvalTasks, MmluMalformedRowsNameFileAndLine) {
  fs::path d = bonsai::test::scratch_dir("mmlu_bad");
  write(d / "test" / "law_test.csv", "Q1?,a,b,c,d,A\nQ2?,a,b,c,D\n");
  std::string e = error_of([&] { load_mc_task("mmlu", d.string()); });
  EXPECT_NE(e.find("law_test.csv:2: expected 6 fields (question, A, B, C, D, answer), found 5"), std::string::npos) << e;
  write(d / "test" / "law_test.csv", "Q1?,a,b,c,d,E\n");
  e = error_of([&] { load_mc_task("mmlu", d.string()); });
  EXPECT_NE(e.find("law_test.csv:1: the answer must be one of A, B, C, D, found 'E'"), std::string::npos) << e;
  write(d / "test" / "law_test.csv", "Q1?,a,b,c,d,A\n\"Q2,a,b,c,d,A\n");
  e = error_of([&] { load_mc_task("mmlu", d.string()); });
  EXPECT_NE(e.find("law_test.csv:2: a quoted field is never closed"), std::string::npos) << e;
  e = error_of([&] { load_mc_task("mmlu", (d / "nothing").string()); });
  EXPECT_NE(e.find("is not named SUBJECT_test.csv"), std::string::npos) << e;
}

TEST(EvalTasks, JsonlMcSchemaAndErrors) {
  fs::path d = bonsai::test::scratch_dir("jsonl_mc");
  fs::path f = d / "mine.jsonl";
  write(f, "{\"query\": \"2+2=\", \"choices\": [\"4\", \"5\"], \"gold\": 0, \"delimiter\": \"\", \"group\": \"math\"}\n\n"
           "{\"query\": \"Sky?\", \"choices\": [\"blue\", \"green\", \"red\"], \"gold\": 2}\n");
  McTask t = load_mc_task("jsonl-mc", f.string());
  ASSERT_EQ(t.questions.size(), 2u);
  EXPECT_EQ(t.questions[0].delimiter, "");
  EXPECT_EQ(t.questions[0].group, "math");
  EXPECT_EQ(t.questions[1].delimiter, " ");
  EXPECT_EQ(t.questions[1].where, f.string() + ":3");
  EXPECT_EQ(mc_context(t, 1, 0, 1), "Sky?");
  EXPECT_EQ(mc_context(t, 1, 1, 1), "2+2=4\n\nSky?");  // the only other question, with its gold choice

  auto err = [&](const std::string& line) {
    write(f, "{\"query\": \"q\", \"choices\": [\"a\", \"b\"], \"gold\": 1}\n" + line + "\n");
    return error_of([&] { load_mc_task("jsonl-mc", f.string()); });
  };
  EXPECT_NE(err("{\"query\": \"q\", \"choices\": [\"a\"").find("mine.jsonl:2: not valid JSON"), std::string::npos);
  EXPECT_NE(err("{\"query\": \"q\", \"choices\": [\"a\", \"b\"], \"gold\": 2}")
                .find("mine.jsonl:2: key 'gold' is 2, but there are 2 choices (0-based)"), std::string::npos);
  EXPECT_NE(err("{\"query\": \"q\", \"choises\": [\"a\", \"b\"], \"gold\": 0}").find("mine.jsonl:2: unknown key 'choises'"),
            std::string::npos);
  EXPECT_NE(err("{\"query\": 3, \"choices\": [\"a\", \"b\"], \"gold\": 0}").find("mine.jsonl:2: key 'query' must be a string"),
            std::string::npos);
  EXPECT_NE(err("[1, 2]").find("mine.jsonl:2: expected a JSON object"), std::string::npos);
}

TEST(EvalTasks, HellaswagAndPiqaErrors) {
  fs::path d = bonsai::test::scratch_dir("hs_bad");
  fs::path f = d / "hs.txt";
  write(f, "Ctx: a man\n1\nx\ny\nz\nw\nCtx: b\nfour\nx\ny\nz\nw\n");
  std::string e = error_of([&] { load_mc_task("hellaswag", f.string()); });
  EXPECT_NE(e.find("hs.txt:8: expected the gold ending's index (0-3), found 'four'"), std::string::npos) << e;
  write(f, "Ctx\n1\nx\ny\nz\n");
  e = error_of([&] { load_mc_task("hellaswag", f.string()); });
  EXPECT_NE(e.find("5 lines, not a multiple of 6"), std::string::npos) << e;

  write(d / "valid.jsonl", "{\"goal\": \"g\", \"sol1\": \"a\", \"sol2\": \"b\"}\n{\"goal\": \"h\", \"sol1\": \"a\", \"sol2\": \"b\"}\n");
  write(d / "valid-labels.lst", "1\n");
  e = error_of([&] { load_mc_task("piqa", d.string()); });
  EXPECT_NE(e.find("has 1 labels for 2 questions"), std::string::npos) << e;
  write(d / "valid-labels.lst", "1\n2\n");
  e = error_of([&] { load_mc_task("piqa", d.string()); });
  EXPECT_NE(e.find("valid-labels.lst:2: expected 0 or 1, found '2'"), std::string::npos) << e;
  write(d / "valid-labels.lst", "1\n0\n");
  McTask t = load_mc_task("piqa", d.string());
  EXPECT_EQ(t.questions[0].query, "Question: g\nAnswer:");
  EXPECT_EQ(t.questions[0].gold, 1);
}

TEST(EvalTasks, Gsm8kAnswerExtraction) {
  EXPECT_EQ(extract_gsm_answer("so 3 + 4 = 7\n#### 1,234\n"), "1234");
  EXPECT_EQ(extract_gsm_answer("It costs $18.00. Then 5 more."), "5");
  EXPECT_EQ(extract_gsm_answer("The answer is $1,018."), "1018");
  EXPECT_EQ(extract_gsm_answer("#### -3.5"), "-3.5");
  EXPECT_EQ(extract_gsm_answer("no numbers here"), "");
  EXPECT_EQ(extract_gsm_answer("The answer is 7", /*strict_only=*/true), "");
  EXPECT_EQ(normalize_number(" $1,000. "), "1000");
}

// The workplace's task files parse whole (skipped, with the reason, when ../shared/data is absent).
TEST(EvalTasks, SharedDataFiles) {
  BONSAI_REQUIRE_DIR("BONSAI_SHARED_DATA", data);
  McTask arc = load_mc_task("arc", default_data_path("arc", data));
  EXPECT_EQ(arc.questions.size(), 1172u);
  EXPECT_EQ(arc.questions[0].gold, 2);
  EXPECT_EQ(arc.questions[0].query.substr(arc.questions[0].query.size() - 8), "\nAnswer:");
  McTask hs = load_mc_task("hellaswag", default_data_path("hellaswag", data));
  EXPECT_EQ(hs.questions.size(), 10042u);
  EXPECT_EQ(hs.questions[0].query, "Roof shingle removal: A man is sitting on a roof. he");
  EXPECT_EQ(hs.questions[0].gold, 3);
  McTask piqa = load_mc_task("piqa", default_data_path("piqa", data));
  EXPECT_EQ(piqa.questions.size(), 1838u);
  GsmTask gsm = load_gsm8k(default_data_path("gsm8k", data));
  EXPECT_EQ(gsm.questions.size(), 1319u);
  EXPECT_EQ(gsm.train.size(), 7473u);
  EXPECT_EQ(gsm.questions[0].target, "18");
}

// ---- the packed scorer against the plain forward -------------------------------------------------
// Reference: each context + continuation through LlamaImpl::forward (tested against transformers),
// log-softmax in fp64, summed over the continuation. Tolerance 1e-5 relative: fp32 sums of ~10
// log-probs in a different order (observed ~1e-7).
TEST(EvalScorer, PackedEqualsPlainForward) {
  torch::manual_seed(0);
  LlamaConfig cfg;
  cfg.vocab_size = 111;
  cfg.hidden_size = 48;
  cfg.intermediate_size = 80;
  cfg.num_hidden_layers = 2;
  cfg.num_attention_heads = 6;
  cfg.num_key_value_heads = 2;  // GQA
  cfg.head_dim = 8;
  cfg.max_position_embeddings = 64;
  Llama model(cfg);
  model->init_random(7, 0.2);
  auto rnd = [](int64_t n, int seed) {
    std::vector<int32_t> v;
    for (int64_t i = 0; i < n; ++i) v.push_back(static_cast<int32_t>((i * 37 + seed * 11) % 111));
    return v;
  };
  std::vector<McRequest> reqs = {
      {rnd(19, 1), {rnd(1, 2), rnd(5, 3), rnd(3, 4)}},
      {rnd(1, 5), {rnd(7, 6), rnd(2, 7)}},
      {rnd(11, 8), {rnd(4, 9), rnd(4, 10), rnd(1, 11), rnd(6, 12)}},
  };
  auto packed = score_requests(model, reqs);
  torch::NoGradGuard ng;
  for (size_t q = 0; q < reqs.size(); ++q) {
    auto single = score_continuations(model, reqs[q].context, reqs[q].continuations);
    for (size_t c = 0; c < reqs[q].continuations.size(); ++c) {
      std::vector<int64_t> all(reqs[q].context.begin(), reqs[q].context.end());
      const auto& cont = reqs[q].continuations[c];
      all.insert(all.end(), cont.begin(), cont.end());
      auto logits = model->forward(torch::tensor(all).unsqueeze(0)).logits[0].to(torch::kDouble);
      auto lp = torch::log_softmax(logits, -1);
      double want = 0;
      bool greedy = true;
      const int64_t T = static_cast<int64_t>(reqs[q].context.size());
      for (size_t j = 0; j < cont.size(); ++j) {
        want += lp[T - 1 + static_cast<int64_t>(j)][cont[j]].item<double>();
        greedy = greedy && lp[T - 1 + static_cast<int64_t>(j)].argmax().item<int64_t>() == cont[j];
      }
      EXPECT_NEAR(packed[q][c].logprob, want, 1e-5 * std::abs(want)) << "question " << q << " choice " << c;
      EXPECT_NEAR(single[c].logprob, want, 1e-5 * std::abs(want)) << "question " << q << " choice " << c;
      EXPECT_EQ(packed[q][c].greedy, greedy);
      EXPECT_EQ(packed[q][c].tokens, static_cast<int64_t>(cont.size()));
    }
  }
}

TEST(EvalScorer, WindowEqualsPlainForward) {
  LlamaConfig cfg;
  cfg.vocab_size = 97;
  cfg.hidden_size = 32;
  cfg.intermediate_size = 64;
  cfg.num_hidden_layers = 2;
  cfg.num_attention_heads = 4;
  cfg.num_key_value_heads = 4;
  cfg.head_dim = 8;
  Llama model(cfg);
  model->init_random(3, 0.2);
  std::vector<int32_t> ids;
  for (int i = 0; i < 23; ++i) ids.push_back((i * 13 + 5) % 97);
  WindowScore w = score_window(model, ids, 9);
  torch::NoGradGuard ng;
  auto lp = torch::log_softmax(
      model->forward(torch::tensor(std::vector<int64_t>(ids.begin(), ids.end())).unsqueeze(0)).logits[0].to(torch::kDouble), -1);
  double want = 0;
  for (int t = 9; t < 23; ++t) want -= lp[t - 1][ids[t]].item<double>();
  EXPECT_EQ(w.tokens, 14);
  EXPECT_NEAR(w.nll, want, 1e-5 * want);
}

}  // namespace
}  // namespace bonsai::eval
