// The regex pre-tokenizer: the split patterns of each known model family, their translation to
// PCRE2 (UTF + UCP, JIT compiled), and the split loop that keeps both matches and the text between
// them, as HF's Split(behavior="Isolated") and llama.cpp's unicode_regex_split do.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/error.h"
#include "data/tokenizer_impl.h"

namespace bonsai::tok {

const char* const kPatternGpt2 = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* const kPatternLlama3 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kPatternDigit = R"(\p{N})";
const char* const kPatternDigits = R"(\p{N}+)";

std::vector<std::string> known_pre_tokenizer(const std::string& name) {
  // llama.cpp writes the GPT-2 pattern without the final `|\s+`; the two split identically because
  // unmatched stretches become pieces anyway (a lone whitespace before a non-space is all `\s+`
  // can add), so one spelling serves every loader and the identity hash.
  if (name == "llama-bpe") return {kPatternLlama3};
  if (name == "gpt-2") return {kPatternGpt2};
  if (name == "smollm" || name == "starcoder") return {kPatternDigit, kPatternGpt2};
  return {};
}

std::string pre_tokenizer_name_for(const std::vector<std::string>& patterns) {
  for (const char* name : {"llama-bpe", "gpt-2", "starcoder"})
    if (known_pre_tokenizer(name) == patterns) return name;
  return "custom";
}

namespace {

// Unicode White_Space, as a character-class body. tiktoken and HF (Rust regex, Oniguruma) and
// llama.cpp all use this set for \s; PCRE2's UCP \s is "Z categories + \t\n\v\f\r", which misses
// U+0085 (NEL).
const char* const kWhiteSpaceClass =
    R"(\x{9}-\x{D}\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

}  // namespace

std::string pcre2_pattern(const std::string& p) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char n = p[++i];
      if (n == 's') {
        out += in_class ? std::string(kWhiteSpaceClass) : "[" + std::string(kWhiteSpaceClass) + "]";
      } else if (n == 'S' && !in_class) {
        out += "[^" + std::string(kWhiteSpaceClass) + "]";
      } else {
        out += c;
        out += n;  // any other escape (\S inside a class keeps PCRE2's meaning; no known pattern has it)
      }
      continue;
    }
    out += c;
    if (!in_class && c == '[') {
      in_class = true;
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];  // a leading ']' is a literal
    } else if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {
      size_t close = p.find(":]", i + 2);  // POSIX class [:alpha:] inside a class
      if (close != std::string::npos) {
        out.append(p, i + 1, close + 2 - (i + 1));
        i = close + 1;
      }
    } else if (in_class && c == ']') {
      in_class = false;
    }
  }
  return out;
}

namespace {

// Per-thread match resources: match data, and a match context with a JIT stack large enough for
// long whitespace runs (the default 32 KiB overflows on lookahead over megabytes of spaces).
struct MatchScratch {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* stack = nullptr;
  MatchScratch() {
    data = pcre2_match_data_create(16, nullptr);
    context = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(64 * 1024, 64 * 1024 * 1024, nullptr);
    if (data == nullptr || context == nullptr || stack == nullptr) throw Error("PCRE2: out of memory for match data");
    pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~MatchScratch() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
};

MatchScratch& scratch() {
  thread_local MatchScratch s;
  return s;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof buf);
  return reinterpret_cast<const char*>(buf);
}

}  // namespace

RegexStage::RegexStage(const std::string& pattern) {
  std::string p = pcre2_pattern(pattern);
  int err = 0;
  PCRE2_SIZE off = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p.c_str()), p.size(), PCRE2_UTF | PCRE2_UCP, &err,
                                   &off, nullptr);
  if (code == nullptr)
    throw Error("pre-tokenizer pattern '" + pattern + "' does not compile (PCRE2, at offset " + std::to_string(off) +
                " of '" + p + "'): " + pcre2_message(err));
  code_ = code;
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;  // falls back to the interpreter
}

RegexStage::~RegexStage() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void RegexStage::split(const char* s, size_t n, PieceFn fn, void* ctx) const {
  auto* code = static_cast<pcre2_code*>(code_);
  MatchScratch& m = scratch();
  auto subject = reinterpret_cast<PCRE2_SPTR>(s);
  PCRE2_SIZE* ov = pcre2_get_ovector_pointer(m.data);
  size_t pos = 0, emitted = 0;
  while (pos < n) {
    // The caller validated the UTF-8 once; per-call checks would rescan the subject every time.
    int rc = jit_ ? pcre2_jit_match(code, subject, n, pos, 0, m.data, m.context)
                  : pcre2_match(code, subject, n, pos, PCRE2_NO_UTF_CHECK, m.data, m.context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) throw Error("pre-tokenizer: PCRE2 match failed on a " + std::to_string(n) + "-byte piece: " + pcre2_message(rc));
    size_t b = ov[0], e = ov[1];
    if (e == b) {  // an empty match splits nothing: step over one character
      pos = b + 1;
      while (pos < n && (static_cast<unsigned char>(s[pos]) & 0xC0) == 0x80) ++pos;
      continue;
    }
    if (b > emitted) fn(ctx, emitted, b);
    fn(ctx, b, e);
    emitted = pos = e;
  }
  if (emitted < n) fn(ctx, emitted, n);
}

PreTokenizer::PreTokenizer(std::vector<std::string> patterns) : patterns_(std::move(patterns)) {
  for (const auto& p : patterns_) stages_.push_back(std::make_unique<RegexStage>(p));
}

}  // namespace bonsai::tok
