// `bonsai prune`: structured pruning of a Llama (Minitron recipe) into a smaller HF checkpoint,
// with a report of every unit's importance and what was kept (prune/recipe.h).
#include "cli/command.h"
#include "prune/recipe.h"

namespace bonsai {

std::unique_ptr<Command> make_prune_command(CLI::App& app) {
  auto cmd = std::make_unique<Command>(app, "prune", "Prune a Llama (heads, neurons, channels, head_dim, layers) by calibrated importance");
  auto cfg = std::make_shared<PruneConfig>();
  cfg->register_keys(cmd->schema());
  cmd->option("--teacher,-m", "teacher.model", "the model to prune");
  cmd->option("--output,-o", "output", "output directory");
  cmd->option("--params", "target.params", "parameter budget, e.g. 70M");
  cmd->option("--device", "device", "auto, cpu or cuda");
  cmd->finish_help();
  ConfigSchema* schema = &cmd->schema();
  cmd->run = [cfg, schema] { return run_prune(*cfg, yaml_to_string(schema->dump())); };
  return cmd;
}

}  // namespace bonsai
