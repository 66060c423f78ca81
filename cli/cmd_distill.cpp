// `bonsai distill` (and the `distill` entry point): train a student on teachers' distributions.
// `bonsai train`: the same trainer with cross-entropy only (e.g. teacher correction).
#include "cli/command.h"
#include "distill/precompute.h"
#include "distill/recipe.h"

namespace bonsai {
namespace {

std::unique_ptr<Command> make_training_command(CLI::App& app, const char* name, const char* about, bool with_teachers) {
  auto cmd = std::make_unique<Command>(app, name, about);
  auto cfg = std::make_shared<DistillConfig>();
  if (!with_teachers) cfg->loss.kd_weight = 0.0;
  cfg->register_keys(cmd->schema(), with_teachers);
  cmd->option("--output,-o", "output", "run directory");
  cmd->option("--student", "student.model", "student model");
  cmd->flag("--resume", "resume", "continue from the run directory's latest checkpoint");
  cmd->finish_help();
  ConfigSchema* schema = &cmd->schema();
  cmd->run = [cfg, schema, with_teachers] {
    cfg->validate(with_teachers);
    return run_distill(*cfg, yaml_to_string(schema->dump()));
  };
  return cmd;
}

}  // namespace

std::unique_ptr<Command> make_distill_command(CLI::App& app) {
  return make_training_command(app, "distill", "Distill teachers into a student (KD + CE), resumable", true);
}

std::unique_ptr<Command> make_distill_precompute_command(CLI::App& distill_app) {
  auto cmd = std::make_unique<Command>(distill_app, "precompute",
                                       "Run a teacher once and store its top-k logits per token (offline distillation)");
  auto cfg = std::make_shared<PrecomputeConfig>();
  cfg->register_keys(cmd->schema());
  cmd->option("--output,-o", "output", "output directory (topk.h5)");
  cmd->option("--teacher", "teacher.model", "the teacher");
  cmd->finish_help();
  cmd->run = [cfg] { return run_precompute(*cfg); };
  return cmd;
}

std::unique_ptr<Command> make_train_command(CLI::App& app) {
  return make_training_command(app, "train", "Train with cross-entropy only (same trainer as distill)", false);
}

}  // namespace bonsai
