// Evaluation task files -> questions, torch-free. Every reader names the file and line of a malformed
// record ("arc.jsonl:17: key 'gold' is 4, but there are 4 choices (0-based)").
//
// Multiple-choice forms (each question becomes a query, its choices and the gold index):
//   arc        JSONL {"query": "Question: ...", "choices": [...], "gold": i} (llm-foundry's ARC form);
//              the prompt is query + "\nAnswer:", a choice is " " + choice (lm-evaluation-harness).
//   hellaswag  text, 6 lines per question (llama.cpp's form): "activity_label: ctx", the gold index
//              (0-based), 4 endings; plain or .bz2. Prompt ctx, choice " " + ending.
//   piqa       valid.jsonl {"goal","sol1","sol2"} + valid-labels.lst (0/1 per line, beside it);
//              prompt "Question: goal\nAnswer:", choice " " + sol.
//   mmlu       Hendrycks' CSV form: a folder with test/SUBJECT_test.csv and dev/SUBJECT_dev.csv (or
//              one test CSV, its dev file found in ../dev/); rows question,A,B,C,D,answer-letter, no
//              header. Prompt "The following are multiple choice questions (with answers) about
//              SUBJECT.\n\n" + the k dev examples + "Q\nA. ..\nB. ..\nC. ..\nD. ..\nAnswer:", choice
//              " A" .. " D"; the dev examples are the few-shot pool (first k, as the original MMLU).
//   jsonl-mc   the generic form for users' own tasks, one JSON object per line:
//                {"query": str, "choices": [str, ...], "gold": int (0-based),
//                 "delimiter": str (optional, default " "), "group": str (optional)}
//              The prompt is query verbatim; a choice is delimiter + choice; results are also given
//              per group when any line has one. Unknown keys are an error (a typo would be silent).
// Generation: gsm8k, JSONL {"question","answer"} with the answer ending in "#### N"; the few-shot
// exemplars come from train.jsonl beside the test file (the first k, as lm-evaluation-harness).
// Perplexity: any text file (scored as one document), or HDF5 token shards (data/shards.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace bonsai::eval {

struct McQuestion {
  std::string query;                 // the question as rendered, without few-shot or delimiter
  std::vector<std::string> choices;  // continuation texts, without the delimiter
  int64_t gold = 0;
  std::string delimiter = " ";       // between the prompt and a choice (lm-eval's target_delimiter)
  std::string group;                 // MMLU subject / jsonl-mc group; "" when none
  std::string where;                 // "file:line", for messages
};

struct McTask {
  std::string name;                   // arc, hellaswag, piqa, mmlu, jsonl-mc
  std::vector<McQuestion> questions;  // what is scored, in file order
  // Few-shot exemplars: a separate pool (MMLU dev, per group) or, when empty, the questions
  // themselves (the scored question is never its own exemplar).
  std::vector<McQuestion> fewshot_pool;
  bool fewshot_first_n = false;       // take the first k of the pool (MMLU) instead of a seeded draw
  std::vector<std::string> files;     // what was read, for the results
};

struct GsmQuestion {
  std::string question, answer;  // answer: the reference chain of thought ending in "#### N"
  std::string target;            // N, normalized (normalize_number)
  std::string where;
};

struct GsmTask {
  std::vector<GsmQuestion> questions, train;  // train: few-shot exemplars (first k)
  std::vector<std::string> files;
};

// The multiple-choice task `name` from `path` (a file or a folder in the forms above). Throws
// bonsai::Error naming file:line for malformed records and the expected layout for a wrong path.
McTask load_mc_task(const std::string& name, const std::string& path);
GsmTask load_gsm8k(const std::string& path);
// The whole file (a .bz2 file decompressed), for perplexity and the line-based readers.
std::string read_text_file(const std::string& path);

// The default data path of a task under the workplace's shared data folder ("" for perplexity,
// jsonl-mc and mmlu, which have none there).
std::string default_data_path(const std::string& task, const std::string& shared_data_dir);
// The task names `bonsai eval` knows.
const std::vector<std::string>& task_names();
bool is_mc_task(const std::string& name);

// Few-shot context of question i (lm-evaluation-harness layout): description, then k exemplars
// "query + delimiter + gold choice" joined by "\n\n", then "\n\n" + the question's query.
std::string mc_context(const McTask& task, size_t i, int64_t shots, uint64_t seed);
// The description line of an MMLU subject ("The following are ... about college biology.\n\n").
std::string mmlu_description(const std::string& subject);

// GSM8K: "#### N" in `text`, else the last number; "" when there is none. Normalized.
std::string extract_gsm_answer(const std::string& text, bool strict_only = false);
// Drops ',' and '$' and a trailing '.', as lm-evaluation-harness's gsm8k filters do.
std::string normalize_number(std::string s);

}  // namespace bonsai::eval
