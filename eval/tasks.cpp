// Readers of the evaluation task files (see tasks.h for the forms) and prompt assembly.
#include "eval/tasks.h"

#include <bzlib.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <regex>
#include <set>
#include <sstream>

#include "core/error.h"

namespace bonsai::eval {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string at(const std::string& file, size_t line) { return file + ":" + std::to_string(line); }

std::string read_bz2(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) throw Error("cannot open '" + path + "'");
  int err = BZ_OK;
  BZFILE* bz = BZ2_bzReadOpen(&err, f, 0, 0, nullptr, 0);
  std::string out;
  char buf[1 << 16];
  while (err == BZ_OK) {
    int n = BZ2_bzRead(&err, bz, buf, sizeof buf);
    if (err == BZ_OK || err == BZ_STREAM_END) out.append(buf, static_cast<size_t>(n));
  }
  BZ2_bzReadClose(nullptr, bz);
  std::fclose(f);
  if (err != BZ_STREAM_END)
    throw Error("'" + path + "' is not a valid bzip2 file (libbz2 error " + std::to_string(err) + ")",
                "decompress it with bzip2 -t to check it, or give the plain text file");
  return out;
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::string line;
  std::istringstream ss(text);
  while (std::getline(ss, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
  }
  return lines;
}

// One JSON object per non-blank line; `fn(object, line_number)`.
template <class Fn>
void for_each_jsonl(const std::string& path, Fn fn) {
  auto lines = split_lines(read_text_file(path));
  for (size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].find_first_not_of(" \t") == std::string::npos) continue;
    json j;
    try {
      j = json::parse(lines[i]);
    } catch (const json::exception& e) {
      throw Error(at(path, i + 1) + ": not valid JSON (" + e.what() + ")", "each line must be one JSON object");
    }
    if (!j.is_object()) throw Error(at(path, i + 1) + ": expected a JSON object, found " + std::string(j.type_name()));
    fn(j, i + 1);
  }
}

std::string get_string(const json& j, const char* key, const std::string& where) {
  if (!j.contains(key)) throw Error(where + ": missing key '" + key + "'");
  if (!j[key].is_string()) throw Error(where + ": key '" + key + "' must be a string, found " + j[key].type_name());
  return j[key].get<std::string>();
}

// query/choices/gold (+ delimiter, group when `generic`).
McQuestion parse_mc_object(const json& j, const std::string& where, bool generic) {
  static const std::set<std::string> known = {"query", "choices", "gold", "delimiter", "group"};
  if (generic)
    for (const auto& [k, v] : j.items())
      if (!known.count(k))
        throw Error(where + ": unknown key '" + k + "'", "jsonl-mc lines have query, choices, gold and optionally delimiter, group");
  McQuestion q;
  q.where = where;
  q.query = get_string(j, "query", where);
  if (!j.contains("choices") || !j["choices"].is_array())
    throw Error(where + ": key 'choices' must be an array of strings");
  for (const auto& c : j["choices"]) {
    if (!c.is_string()) throw Error(where + ": key 'choices' must hold strings, found " + std::string(c.type_name()));
    q.choices.push_back(c.get<std::string>());
  }
  if (q.choices.size() < 2) throw Error(where + ": a question needs at least 2 choices, found " + std::to_string(q.choices.size()));
  if (!j.contains("gold") || !j["gold"].is_number_integer())
    throw Error(where + ": key 'gold' must be an integer (0-based index into choices)");
  q.gold = j["gold"].get<int64_t>();
  if (q.gold < 0 || q.gold >= static_cast<int64_t>(q.choices.size()))
    throw Error(where + ": key 'gold' is " + std::to_string(q.gold) + ", but there are " +
                std::to_string(q.choices.size()) + " choices (0-based)");
  if (generic && j.contains("delimiter")) q.delimiter = get_string(j, "delimiter", where);
  if (generic && j.contains("group")) q.group = get_string(j, "group", where);
  return q;
}

McTask load_jsonl_mc(const std::string& path, bool arc) {
  McTask t;
  t.files = {path};
  for_each_jsonl(path, [&](const json& j, size_t line) {
    McQuestion q = parse_mc_object(j, at(path, line), !arc);
    // lm-evaluation-harness's ARC prompt is "Question: ...\nAnswer:"; the file holds the first part.
    if (arc && (q.query.size() < 7 || q.query.compare(q.query.size() - 7, 7, "Answer:") != 0)) q.query += "\nAnswer:";
    t.questions.push_back(std::move(q));
  });
  return t;
}

McTask load_hellaswag(const std::string& path) {
  McTask t;
  t.files = {path};
  auto lines = split_lines(read_text_file(path));
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  if (lines.size() % 6 != 0)
    throw Error(path + ": " + std::to_string(lines.size()) + " lines, not a multiple of 6",
                "the HellaSwag text form has 6 lines per task: context, gold index (0-3), 4 endings");
  for (size_t i = 0; i < lines.size(); i += 6) {
    McQuestion q;
    q.where = at(path, i + 1);
    q.query = lines[i];
    const std::string& g = lines[i + 1];
    if (g.size() != 1 || g[0] < '0' || g[0] > '3')
      throw Error(at(path, i + 2) + ": expected the gold ending's index (0-3), found '" + g + "'",
                  "the HellaSwag text form has 6 lines per task: context, gold index, 4 endings");
    q.gold = g[0] - '0';
    for (size_t k = 0; k < 4; ++k) {
      if (lines[i + 2 + k].empty()) throw Error(at(path, i + 3 + k) + ": empty ending");
      q.choices.push_back(lines[i + 2 + k]);
    }
    if (q.query.empty()) throw Error(at(path, i + 1) + ": empty context");
    t.questions.push_back(std::move(q));
  }
  return t;
}

McTask load_piqa(const std::string& path) {
  std::string jsonl = path, labels;
  if (fs::is_directory(path)) jsonl = (fs::path(path) / "valid.jsonl").string();
  fs::path p(jsonl);
  std::string stem = p.stem().string();  // valid -> valid-labels.lst
  labels = (p.parent_path() / (stem + "-labels.lst")).string();
  if (!fs::exists(jsonl)) throw Error("PIQA questions '" + jsonl + "' not found", "give --data DIR with valid.jsonl and valid-labels.lst, or the .jsonl file");
  if (!fs::exists(labels)) throw Error("PIQA labels '" + labels + "' not found", "the labels file sits beside the questions: NAME-labels.lst, one 0/1 per line");
  McTask t;
  t.files = {jsonl, labels};
  for_each_jsonl(jsonl, [&](const json& j, size_t line) {
    McQuestion q;
    q.where = at(jsonl, line);
    q.query = "Question: " + get_string(j, "goal", q.where) + "\nAnswer:";
    q.choices = {get_string(j, "sol1", q.where), get_string(j, "sol2", q.where)};
    t.questions.push_back(std::move(q));
  });
  auto lab = split_lines(read_text_file(labels));
  while (!lab.empty() && lab.back().empty()) lab.pop_back();
  if (lab.size() != t.questions.size())
    throw Error("PIQA: '" + labels + "' has " + std::to_string(lab.size()) + " labels for " +
                std::to_string(t.questions.size()) + " questions in '" + jsonl + "'", "the files must be aligned line by line");
  for (size_t i = 0; i < lab.size(); ++i) {
    if (lab[i] != "0" && lab[i] != "1") throw Error(at(labels, i + 1) + ": expected 0 or 1, found '" + lab[i] + "'");
    t.questions[i].gold = lab[i][0] - '0';
  }
  return t;
}

// RFC 4180 CSV: quoted fields may hold commas, newlines and "" escapes. Each record with the line
// it starts on.
std::vector<std::pair<size_t, std::vector<std::string>>> parse_csv(const std::string& path) {
  std::string s = read_text_file(path);
  std::vector<std::pair<size_t, std::vector<std::string>>> rows;
  std::vector<std::string> row;
  std::string field;
  size_t line = 1, row_line = 1;
  bool quoted = false, field_started = false;
  auto end_field = [&] { row.push_back(field); field.clear(); field_started = false; };
  auto end_row = [&] {
    end_field();
    if (!(row.size() == 1 && row[0].empty())) rows.emplace_back(row_line, row);
    row.clear();
  };
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (quoted) {
      if (c == '"') {
        if (i + 1 < s.size() && s[i + 1] == '"') field += '"', ++i;
        else quoted = false;
      } else {
        if (c == '\n') ++line;
        field += c;
      }
      continue;
    }
    if (c == '"' && !field_started && field.empty()) {
      quoted = field_started = true;
    } else if (c == ',') {
      end_field();
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
      end_row();
      row_line = ++line;
    } else {
      field += c;
      field_started = true;
    }
  }
  if (quoted) throw Error(at(path, row_line) + ": a quoted field is never closed", "close it with a '\"' (write \"\" for a quote inside)");
  if (!field.empty() || !row.empty()) end_row();
  return rows;
}

std::vector<McQuestion> load_mmlu_csv(const std::string& path, const std::string& subject) {
  std::vector<McQuestion> out;
  for (auto& [line, row] : parse_csv(path)) {
    std::string where = at(path, line);
    if (row.size() != 6)
      throw Error(where + ": expected 6 fields (question, A, B, C, D, answer), found " + std::to_string(row.size()),
                  "MMLU CSV rows have no header; quote fields that contain commas");
    const std::string& ans = row[5];
    if (ans.size() != 1 || ans[0] < 'A' || ans[0] > 'D')
      throw Error(where + ": the answer must be one of A, B, C, D, found '" + ans + "'");
    McQuestion q;
    q.where = where;
    q.group = subject;
    q.query = row[0] + "\nA. " + row[1] + "\nB. " + row[2] + "\nC. " + row[3] + "\nD. " + row[4] + "\nAnswer:";
    q.choices = {"A", "B", "C", "D"};
    q.gold = ans[0] - 'A';
    out.push_back(std::move(q));
  }
  return out;
}

// "college_biology_test.csv" -> "college_biology" (the suffix must match).
std::string subject_of(const fs::path& file, const std::string& suffix) {
  std::string name = file.filename().string();
  if (name.size() <= suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) return "";
  return name.substr(0, name.size() - suffix.size());
}

McTask load_mmlu(const std::string& path) {
  McTask t;
  t.fewshot_first_n = true;
  std::vector<fs::path> tests;
  fs::path dev_dir;
  if (fs::is_directory(path)) {
    fs::path test_dir = fs::path(path) / "test";
    dev_dir = fs::path(path) / "dev";
    if (!fs::is_directory(test_dir))
      throw Error("MMLU folder '" + path + "' has no test/ folder", "give the MMLU data folder (test/SUBJECT_test.csv, dev/SUBJECT_dev.csv) or one SUBJECT_test.csv");
    for (const auto& e : fs::directory_iterator(test_dir))
      if (!subject_of(e.path(), "_test.csv").empty()) tests.push_back(e.path());
    std::sort(tests.begin(), tests.end());
    if (tests.empty()) throw Error("MMLU folder '" + test_dir.string() + "' has no SUBJECT_test.csv files");
  } else {
    if (subject_of(path, "_test.csv").empty())
      throw Error("MMLU file '" + path + "' is not named SUBJECT_test.csv", "the subject comes from the file name, e.g. anatomy_test.csv");
    tests.push_back(path);
    dev_dir = fs::path(path).parent_path().parent_path() / "dev";
  }
  for (const auto& f : tests) {
    std::string subject = subject_of(f, "_test.csv");
    auto qs = load_mmlu_csv(f.string(), subject);
    t.questions.insert(t.questions.end(), qs.begin(), qs.end());
    t.files.push_back(f.string());
    fs::path dev = dev_dir / (subject + "_dev.csv");
    if (fs::exists(dev)) {
      auto ds = load_mmlu_csv(dev.string(), subject);
      t.fewshot_pool.insert(t.fewshot_pool.end(), ds.begin(), ds.end());
      t.files.push_back(dev.string());
    }
  }
  return t;
}

}  // namespace

std::string read_text_file(const std::string& path) {
  if (fs::is_directory(path)) throw Error("'" + path + "' is a folder, a file was expected");
  if (!fs::exists(path)) throw Error("no file '" + path + "'", "check --data (or the task's default data under ../shared/data/eval)");
  if (path.size() > 4 && path.compare(path.size() - 4, 4, ".bz2") == 0) return read_bz2(path);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open '" + path + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const std::vector<std::string>& task_names() {
  static const std::vector<std::string> names = {"perplexity", "arc", "hellaswag", "piqa", "mmlu", "gsm8k", "jsonl-mc"};
  return names;
}

bool is_mc_task(const std::string& n) {
  return n == "arc" || n == "hellaswag" || n == "piqa" || n == "mmlu" || n == "jsonl-mc";
}

std::string default_data_path(const std::string& task, const std::string& shared) {
  if (shared.empty()) return "";
  fs::path e = fs::path(shared) / "eval";
  if (task == "arc") return (e / "arc_challenge.jsonl").string();
  if (task == "hellaswag") return (e / "hellaswag" / "hellaswag_val_full.txt.bz2").string();
  if (task == "piqa") return (e / "piqa" / "valid.jsonl").string();
  if (task == "gsm8k") return (e / "gsm8k" / "test.jsonl").string();
  return "";
}

McTask load_mc_task(const std::string& name, const std::string& path) {
  McTask t;
  if (name == "arc") t = load_jsonl_mc(path, /*arc=*/true);
  else if (name == "jsonl-mc") t = load_jsonl_mc(path, /*arc=*/false);
  else if (name == "hellaswag") t = load_hellaswag(path);
  else if (name == "piqa") t = load_piqa(path);
  else if (name == "mmlu") t = load_mmlu(path);
  else throw Error("'" + name + "' is not a multiple-choice task");
  t.name = name;
  if (t.questions.empty()) throw Error("task " + name + ": '" + path + "' holds no questions");
  return t;
}

std::string mmlu_description(const std::string& subject) {
  std::string s = subject;
  std::replace(s.begin(), s.end(), '_', ' ');
  return "The following are multiple choice questions (with answers) about " + s + ".\n\n";
}

std::string mc_context(const McTask& task, size_t i, int64_t shots, uint64_t seed) {
  const McQuestion& q = task.questions[i];
  std::string ctx = task.name == "mmlu" ? mmlu_description(q.group) : "";
  auto exemplar = [](const McQuestion& e) { return e.query + e.delimiter + e.choices[e.gold] + "\n\n"; };
  if (shots > 0) {
    if (!task.fewshot_pool.empty()) {
      std::vector<const McQuestion*> pool;
      for (const auto& e : task.fewshot_pool)
        if (e.group == q.group) pool.push_back(&e);
      if (static_cast<int64_t>(pool.size()) < shots)
        throw Error(q.where + ": " + std::to_string(shots) + " shots asked, the few-shot pool" +
                    (q.group.empty() ? "" : " of '" + q.group + "'") + " has " + std::to_string(pool.size()),
                    "lower --shots");
      if (task.fewshot_first_n) {
        for (int64_t k = 0; k < shots; ++k) ctx += exemplar(*pool[k]);
      } else {
        std::mt19937_64 rng(seed * 1000003ULL + i);
        std::shuffle(pool.begin(), pool.end(), rng);
        for (int64_t k = 0; k < shots; ++k) ctx += exemplar(*pool[k]);
      }
    } else {  // a seeded draw from the other questions
      const size_t n = task.questions.size();
      if (static_cast<int64_t>(n) - 1 < shots)
        throw Error("task " + task.name + ": " + std::to_string(shots) + " shots asked, but only " + std::to_string(n) +
                    " questions to draw exemplars from", "lower --shots");
      std::mt19937_64 rng(seed * 1000003ULL + i);
      std::set<size_t> picked;
      std::vector<size_t> order;
      while (static_cast<int64_t>(order.size()) < shots) {
        size_t k = std::uniform_int_distribution<size_t>(0, n - 1)(rng);
        if (k != i && picked.insert(k).second) order.push_back(k);
      }
      for (size_t k : order) ctx += exemplar(task.questions[k]);
    }
  }
  return ctx + q.query;
}

GsmTask load_gsm8k(const std::string& path) {
  std::string test = path;
  if (fs::is_directory(path)) test = (fs::path(path) / "test.jsonl").string();
  std::string train = (fs::path(test).parent_path() / "train.jsonl").string();
  GsmTask t;
  auto read = [](const std::string& file, std::vector<GsmQuestion>& out) {
    for_each_jsonl(file, [&](const json& j, size_t line) {
      GsmQuestion q;
      q.where = at(file, line);
      q.question = get_string(j, "question", q.where);
      q.answer = get_string(j, "answer", q.where);
      size_t p = q.answer.rfind("####");
      if (p == std::string::npos)
        throw Error(q.where + ": the answer has no '#### N' final line", "GSM8K answers end in '#### <number>'");
      q.target = normalize_number(q.answer.substr(p + 4));
      q.target.erase(0, q.target.find_first_not_of(" \t"));
      if (q.target.empty()) throw Error(q.where + ": nothing after '####'");
      out.push_back(std::move(q));
    });
  };
  read(test, t.questions);
  t.files.push_back(test);
  if (fs::exists(train)) {
    read(train, t.train);
    t.files.push_back(train);
  }
  if (t.questions.empty()) throw Error("gsm8k: '" + test + "' holds no questions");
  return t;
}

std::string normalize_number(std::string s) {
  s.erase(std::remove_if(s.begin(), s.end(), [](char c) { return c == ',' || c == '$'; }), s.end());
  while (!s.empty() && (s.back() == ' ' || s.back() == '\n' || s.back() == '\t')) s.pop_back();
  size_t b = s.find_first_not_of(" \t\n");
  s = b == std::string::npos ? "" : s.substr(b);
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s;
}

std::string extract_gsm_answer(const std::string& text, bool strict_only) {
  // lm-evaluation-harness gsm8k: strict "#### (\-?[0-9\.\,]+)", flexible: the last number.
  static const std::regex strict("#### (\\-?[0-9\\.\\,]+)");
  static const std::regex number("(-?[$0-9.,]{2,})|(-?[0-9]+)");
  std::smatch m;
  if (std::regex_search(text, m, strict)) return normalize_number(m[1].str());
  if (strict_only) return "";
  std::string last;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), number); it != std::sregex_iterator(); ++it)
    last = (*it)[0].str();
  return normalize_number(last);
}

}  // namespace bonsai::eval
