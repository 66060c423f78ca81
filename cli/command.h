// The conventions every `bonsai` command shares, set once here:
//   bonsai CMD [--config X.yaml] [flags] [key.sub=value ...] [--validate] [--output DIR] [--help]
// Flags are shorthands for config keys (--model M is model=M); key=value overrides come last and
// win; --validate prints the resolved config and exits 0; errors print one message and a hint on
// stderr and exit 1 (2 for command-line misuse).
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"

namespace bonsai {

class Command {
 public:
  Command(CLI::App& parent, const std::string& name, const std::string& description);
  ConfigSchema& schema() { return schema_; }
  CLI::App* app() const { return app_; }
  const std::string& name() const { return name_; }

  // `--model X` sets config key `model`.
  void option(const std::string& flags, const std::string& key, const std::string& help);
  // `--chat` sets config key `chat` to true.
  void flag(const std::string& flags, const std::string& key, const std::string& help);
  // Call after the schema is complete: lists the config keys under --help.
  void finish_help();

  // Reads --config, applies flags then key=value overrides, fills the schema's targets. Returns
  // false when --validate asked only for the check (the resolved config was printed).
  bool resolve();
  std::function<int()> run;

 private:
  CLI::App* app_;
  std::string name_;
  ConfigSchema schema_;
  std::string config_path_;
  std::vector<std::string> overrides_;
  std::vector<std::pair<std::string, std::string*>> key_options_;  // key, value (empty if unset)
  std::vector<std::pair<std::string, bool*>> key_flags_;
  std::vector<std::unique_ptr<std::string>> option_values_;
  std::vector<std::unique_ptr<bool>> flag_values_;
  bool validate_ = false;
};

using CommandFactory = std::unique_ptr<Command> (*)(CLI::App& app);

// The registered commands (each cli/cmd_*.cpp adds one).
std::unique_ptr<Command> make_export_command(CLI::App& app);
std::unique_ptr<Command> make_prune_command(CLI::App& app);
std::unique_ptr<Command> make_generate_command(CLI::App& app);
std::unique_ptr<Command> make_eval_command(CLI::App& app);
std::unique_ptr<Command> make_distill_command(CLI::App& app);
std::unique_ptr<Command> make_train_command(CLI::App& app);
std::unique_ptr<Command> make_distill_precompute_command(CLI::App& distill_app);  // `distill precompute`
std::unique_ptr<Command> make_data_command(CLI::App& app);            // creates `data`, adds `data tokenize`
std::unique_ptr<Command> make_data_pack_command(CLI::App& data_app);  // adds `data pack`

// The whole CLI: parse, dispatch, turn exceptions into one message and an exit code.
int bonsai_main(int argc, char** argv);

}  // namespace bonsai
