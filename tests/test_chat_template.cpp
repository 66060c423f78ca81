// Tests for the built-in chat templates (data/chat_template.*): byte-exact agreement with the
// models' Jinja templates rendered the way HF's apply_chat_template renders them (golden file from
// scripts/ref/chat_template_ref.py in $BONSAI_CHAT_REF_DIR), token ids against tiktoken / llama.cpp,
// the assistant loss mask, template recognition, and the Python-compatible string helpers.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <ctime>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"
#include "data/chat_template.h"
#include "data/tokenizer.h"
#include "model/registry.h"
#include "test_util.h"

namespace bonsai {
namespace {

using bonsai::test::read_all;

using ::testing::HasSubstr;
using json = nlohmann::json;

std::vector<ChatMessage> messages_of(const json& j) {
  std::vector<ChatMessage> out;
  for (const auto& m : j) out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  return out;
}

// The tokenizer each golden template's ids come from; nullptr when its file is not on this machine.
const Tokenizer* tokenizer_for(const std::string& template_name) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  std::string key = template_name == "smollm2" ? "smollm2" : "llama3";
  auto it = cache.find(key);
  if (it != cache.end()) return it->second.get();
  std::unique_ptr<Tokenizer> t;
  try {
    std::string spec = key == "smollm2" ? resolve_model("smollm2-135m-instruct")
                                        : bonsai::test::env_dir("BONSAI_SHARED_DATA") + "/tokenizer/llama3/tokenizer.model";
    t = std::make_unique<Tokenizer>(Tokenizer::load(spec));
  } catch (const Error&) {
  }
  return cache.emplace(key, std::move(t)).first->second.get();
}

// What the loss mask must select: each assistant turn's content (trimmed by the Llama templates)
// and its end-of-turn token.
std::string assistant_text(const ChatTemplate& t, const std::vector<ChatMessage>& messages) {
  std::string s;
  for (const auto& m : messages)
    if (m.role == "assistant") s += (t.format() == ChatFormat::ChatML ? m.content : python_strip(m.content)) + t.end_of_turn();
  return s;
}

TEST(ChatTemplateGolden, MatchesJinjaRenderingsAndTokenIds) {
  BONSAI_REQUIRE_DIR("BONSAI_CHAT_REF_DIR", ref_dir);
  json golden = json::parse(read_all(ref_dir + "/chat_golden.json"));
  std::map<std::string, ChatTemplate> templates;
  for (const auto& [name, jinja] : golden["templates"].items()) {
    ChatTemplate t = ChatTemplate::from_jinja(jinja.get<std::string>());
    EXPECT_EQ(t.name(), name) << "recognized as the wrong built-in";
    templates.emplace(name, t);
  }
  int rendered = 0, errors = 0, encoded = 0;
  for (const auto& c : golden["cases"]) {
    std::string where = c["template"].get<std::string>() + " / " + c["conversation"].get<std::string>() +
                        (c["add_generation_prompt"].get<bool>() ? " + generation prompt" : "") +
                        (c.contains("date_string") ? " / date " + c["date_string"].get<std::string>() : "");
    ChatTemplate t = templates.at(c["template"]);
    t.bos_token = c["bos_token"];
    if (c.contains("date_string")) t.date_string = c["date_string"];
    std::vector<ChatMessage> messages = messages_of(c["messages"]);
    bool gen = c["add_generation_prompt"];
    if (c.contains("error")) {
      EXPECT_THROW(t.render(messages, gen), Error) << where << ": the Jinja template fails here";
      ++errors;
      continue;
    }
    EXPECT_EQ(t.render(messages, gen), c["expected"].get<std::string>()) << where;
    ++rendered;
    const Tokenizer* tok = tokenizer_for(c["template"]);
    if (tok == nullptr) continue;
    EncodedChat e = encode_chat(*tok, t, messages, gen);
    EXPECT_EQ(e.ids, c["ids"].get<std::vector<int32_t>>()) << where;
    ASSERT_EQ(e.mask.size(), e.ids.size());
    std::vector<int32_t> masked;
    for (size_t i = 0; i < e.ids.size(); ++i)
      if (e.mask[i]) masked.push_back(e.ids[i]);
    EXPECT_EQ(tok->decode(masked), assistant_text(t, messages)) << where << ": loss mask";
    ++encoded;
  }
  std::printf("chat templates: %d renderings identical to Jinja, %d template errors reproduced, %d encodings checked\n",
              rendered, errors, encoded);
  EXPECT_GT(rendered, 80);
}

// ---- without the golden file ------------------------------------------------------------------

TEST(ChatTemplate, Llama31RendersTheSystemHeader) {
  ChatTemplate t = ChatTemplate::llama31();
  std::string s = t.render({{"user", "  Hi  "}}, true);
  EXPECT_EQ(s,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
            "Today Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  t.date_string = "01 Jan 2030";
  EXPECT_THAT(t.render({{"user", "x"}}, false), HasSubstr("Today Date: 01 Jan 2030\n\n"));
}

TEST(ChatTemplate, Llama32DefaultsToToday) {
  auto today = [] {
    std::time_t now = std::time(nullptr);
    std::tm local{};
    localtime_r(&now, &local);
    char buf[32];
    std::strftime(buf, sizeof buf, "%d %b %Y", &local);
    return std::string(buf);
  };
  std::string before = today();
  std::string s = ChatTemplate::llama32().render({{"user", "x"}}, false);
  std::string after = today();
  EXPECT_TRUE(s.find("Today Date: " + before + "\n") != std::string::npos ||
              s.find("Today Date: " + after + "\n") != std::string::npos)
      << s;
}

TEST(ChatTemplate, ChatMLInjectsOnlyAMissingSystemPrompt) {
  ChatTemplate t = ChatTemplate::smollm2();
  EXPECT_EQ(t.render({{"user", "a"}}, true),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(t.render({{"system", "S"}, {"user", "a"}}, false),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\na<|im_end|>\n");
  EXPECT_EQ(ChatTemplate::chatml().render({{"user", "a"}}, false), "<|im_start|>user\na<|im_end|>\n");
}

TEST(ChatTemplate, RecognitionAndErrors) {
  EXPECT_EQ(ChatTemplate::from_jinja("{{ '<|im_start|>' + m + '<|im_end|>' }}").name(), "chatml");
  EXPECT_EQ(ChatTemplate::from_jinja("{{ '<|start_header_id|>' + r + '<|end_header_id|>' + c + '<|eot_id|>' }}").name(),
            "llama3");
  try {
    ChatTemplate::from_jinja("{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}");
    ADD_FAILURE() << "a Mistral template was accepted";
  } catch (const Error& e) {
    EXPECT_THAT(std::string(e.what()), AllOf(HasSubstr("not recognized"), HasSubstr("[INST]")));
    EXPECT_THAT(e.hint(), HasSubstr("ChatML"));
  }
  EXPECT_THROW(ChatTemplate::llama31().render({}, true), Error);
  EXPECT_EQ(ChatTemplate::llama3().render({}, true), "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplate, ForTokenizerAndNoDoubleBos) {
  const Tokenizer* llama = tokenizer_for("llama3");
  if (llama == nullptr) GTEST_SKIP() << "BONSAI_SHARED_DATA has no tokenizer/llama3/tokenizer.model";
  ChatTemplate t = ChatTemplate::for_tokenizer(*llama);  // tiktoken files carry no template
  EXPECT_EQ(t.name(), "llama3.1");
  EncodedChat e = encode_chat(*llama, t, {{"system", "Be kind."}, {"user", "Hi"}, {"assistant", "Hello!"}}, false);
  ASSERT_FALSE(e.ids.empty());
  EXPECT_EQ(e.ids[0], llama->bos_id());
  EXPECT_EQ(std::count(e.ids.begin(), e.ids.end(), llama->bos_id()), 1);
  EXPECT_EQ(e.ids.back(), llama->token_id("<|eot_id|>"));
  EXPECT_EQ(e.mask.back(), 1);
  EXPECT_EQ(e.mask.front(), 0);
  const Tokenizer* smol = tokenizer_for("smollm2");
  if (smol != nullptr) {
    EXPECT_EQ(ChatTemplate::for_tokenizer(*smol).name(), "smollm2");
  }
}

TEST(ChatTemplateStrings, PythonStripAndJsonDumps) {
  EXPECT_EQ(python_strip(" \t\n\v\f\r\x1c\x1f hi there \xc2\x85\xc2\xa0\xe3\x80\x80\xe2\x80\xa8"), "hi there");
  EXPECT_EQ(python_strip("\xe2\x80\x8bzero-width\xe2\x80\x8b"), "\xe2\x80\x8bzero-width\xe2\x80\x8b");  // not space
  EXPECT_EQ(python_strip("   "), "");
  EXPECT_EQ(json_dumps_string("a\"b\\c\nd\te\x01\x7f é"), "\"a\\\"b\\\\c\\nd\\te\\u0001\x7f é\"");
}

}  // namespace
}  // namespace bonsai
