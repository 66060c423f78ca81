// ConfigSchema: defaults, overrides, type errors, unknown keys with "did you mean", required keys.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/config.h"
#include "core/error.h"
#include "core/strings.h"
#include "test_util.h"

namespace bonsai {
namespace {

using bonsai::test::error_of;

using ::testing::HasSubstr;

struct TrainCfg {
  std::string model = "m";
  int64_t max_steps = 10;
  double lr = 1e-3;
  bool resume = false;
  std::string loss = "fkl";
  std::vector<std::string> files;
};

ConfigSchema schema_for(TrainCfg& c) {
  ConfigSchema s;
  s.add("model", &c.model, "model");
  s.add("train.max_steps", &c.max_steps, "steps");
  s.add("train.optim.lr", &c.lr, "learning rate");
  s.add("train.resume", &c.resume, "resume");
  s.add_choice("loss", &c.loss, {"fkl", "rkl", "jsd"}, "loss");
  s.add("data.files", &c.files, "files");
  return s;
}

TEST(Config, DefaultsSurviveAnEmptyDocument) {
  TrainCfg c;
  schema_for(c).read(YAML::Load("{}"), "t");
  EXPECT_EQ(c.max_steps, 10);
  EXPECT_EQ(c.loss, "fkl");
}

TEST(Config, ReadsNestedKeysAndOverridesWin) {
  TrainCfg c;
  YAML::Node n = YAML::Load("train:\n  max_steps: 5\n  optim: {lr: 0.5}\ndata:\n  files: [a, b]\n");
  apply_override(n, "train.max_steps=20");
  apply_override(n, "train.resume=true");
  apply_override(n, "model=hf:some/path");
  apply_override(n, "data.files=[x, y, z]");
  schema_for(c).read(n, "t");
  EXPECT_EQ(c.max_steps, 20);
  EXPECT_DOUBLE_EQ(c.lr, 0.5);
  EXPECT_TRUE(c.resume);
  EXPECT_EQ(c.model, "hf:some/path");
  EXPECT_EQ(c.files, (std::vector<std::string>{"x", "y", "z"}));
}

TEST(Config, UnknownKeyNamesTheNearestValidOne) {
  TrainCfg c;
  auto msg = error_of([&] { schema_for(c).read(YAML::Load("train: {max_step: 3}"), "configs/x.yaml"); });
  EXPECT_THAT(msg, HasSubstr("configs/x.yaml"));
  EXPECT_THAT(msg, HasSubstr("unknown key 'train.max_step'"));
  EXPECT_THAT(msg, HasSubstr("did you mean 'train.max_steps'"));
}

TEST(Config, WrongTypeAndBadChoiceAreClear) {
  TrainCfg c;
  EXPECT_THAT(error_of([&] { schema_for(c).read(YAML::Load("train: {max_steps: ten}"), "t"); }),
              HasSubstr("key 'train.max_steps' must be an integer, got 'ten'"));
  EXPECT_THAT(error_of([&] { schema_for(c).read(YAML::Load("loss: fk"), "t"); }),
              HasSubstr("expected one of: fkl, rkl, jsd"));
  EXPECT_THAT(error_of([&] { schema_for(c).read(YAML::Load("train: 3"), "t"); }), HasSubstr("unknown key 'train'"));
}

TEST(Config, RequiredKeysMustBeSet) {
  TrainCfg c;
  c.model.clear();
  auto s = schema_for(c);
  s.require("model", "give --model");
  EXPECT_THAT(error_of([&] { s.read(YAML::Load("{}"), "t"); }), HasSubstr("key 'model' is required"));
}

TEST(Config, DumpRoundTrips) {
  TrainCfg a, b;
  a.max_steps = 77;
  a.files = {"q"};
  YAML::Node dumped = YAML::Load(yaml_to_string(schema_for(a).dump()));
  schema_for(b).read(dumped, "dump");
  EXPECT_EQ(b.max_steps, 77);
  EXPECT_EQ(b.files, a.files);
}

TEST(Config, BadOverrideSyntax) {
  YAML::Node n = YAML::Load("{}");
  EXPECT_THAT(error_of([&] { apply_override(n, "novalue"); }), HasSubstr("key.sub=value"));
}

TEST(Strings, SizesAndEditDistance) {
  EXPECT_EQ(parse_size("5GB", "x"), 5000000000ull);
  EXPECT_EQ(parse_size("2MiB", "x"), 2ull * 1024 * 1024);
  EXPECT_THAT(error_of([] { parse_size("5XB", "key 'shard_size'"); }), HasSubstr("key 'shard_size'"));
  EXPECT_EQ(edit_distance("kitten", "sitting"), 3u);
  EXPECT_EQ(nearest("max_step", {"max_steps", "lr"}), "max_steps");
  EXPECT_EQ(nearest("zzzzzzzz", {"max_steps", "lr"}), "");
}

}  // namespace
}  // namespace bonsai
