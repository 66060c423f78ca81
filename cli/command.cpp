#include "cli/command.h"

#include <torch/torch.h>

#include <cstdio>

#include "core/error.h"
#include "core/process.h"

namespace bonsai {

Command::Command(CLI::App& parent, const std::string& name, const std::string& description)
    : app_(parent.add_subcommand(name, description)), name_(name) {
  app_->add_option("--config,-c", config_path_, "YAML config file (see configs/)");
  app_->add_flag("--validate", validate_, "check the config, print it resolved, and exit");
  app_->add_option("overrides", overrides_, "config overrides: key.sub=value ...");
}

void Command::option(const std::string& flags, const std::string& key, const std::string& help) {
  option_values_.push_back(std::make_unique<std::string>());
  app_->add_option(flags, *option_values_.back(), help + "  (config key: " + key + ")");
  key_options_.emplace_back(key, option_values_.back().get());
}

void Command::flag(const std::string& flags, const std::string& key, const std::string& help) {
  flag_values_.push_back(std::make_unique<bool>(false));
  app_->add_flag(flags, *flag_values_.back(), help + "  (config key: " + key + ")");
  key_flags_.emplace_back(key, flag_values_.back().get());
}

void Command::finish_help() {
  app_->footer("Config keys (set in --config YAML, or as key=value after the flags):\n" + schema_.help());
}

bool Command::resolve() {
  YAML::Node root = load_config_yaml(config_path_);
  for (const auto& [key, value] : key_options_)
    if (!value->empty()) set_literal(root, key, *value);  // flag values are text, never YAML
  for (const auto& [key, value] : key_flags_)
    if (*value) apply_override(root, key + "=true");
  for (const auto& o : overrides_) apply_override(root, o);
  std::string source = config_path_.empty() ? "command line" : "config '" + config_path_ + "'";
  if (!overrides_.empty() && !config_path_.empty()) source += " (with overrides)";
  schema_.read(root, source);
  if (validate_) {
    std::printf("# %s: config is valid; resolved values:\n%s\n", name_.c_str(), yaml_to_string(schema_.dump()).c_str());
    return false;
  }
  return true;
}

namespace {

// Commands of the pipeline that later work adds; named so that asking for one gets a clear answer
// rather than a parse error.
const char* planned_issue(const std::string& cmd) {
  if (cmd == "align") return "[Align]";
  if (cmd == "serve") return "[Runtime & export]";
  return nullptr;
}

void print_error(const std::string& cmd, const std::string& what, const std::string& hint) {
  std::fprintf(stderr, "bonsai%s%s: error: %s\n", cmd.empty() ? "" : " ", cmd.c_str(), what.c_str());
  if (!hint.empty()) std::fprintf(stderr, "  hint: %s\n", hint.c_str());
}

}  // namespace

int bonsai_main(int argc, char** argv) {
  configure_allocator();
  CLI::App app{"bonsai: structured pruning, distillation, alignment and serving of Llama models"};
  app.require_subcommand(1);
  app.footer("Run 'bonsai COMMAND --help' for a command's options and config keys.");
  std::vector<std::unique_ptr<Command>> commands;
  commands.push_back(make_export_command(app));
  commands.push_back(make_prune_command(app));
  commands.push_back(make_generate_command(app));
  commands.push_back(make_eval_command(app));
  commands.push_back(make_distill_command(app));
  commands.push_back(make_distill_precompute_command(*commands.back()->app()));
  commands.push_back(make_train_command(app));
  commands.push_back(make_data_command(app));  // `data` with `data tokenize`
  commands.push_back(make_data_pack_command(*app.get_subcommand("data")));
  if (argc >= 2) {
    std::string first = argv[1];
    bool registered = false;
    std::string names;
    for (const auto& c : commands) {
      // Nested commands (data tokenize) are listed by their top-level name.
      const CLI::App* top = c->app();
      while (top->get_parent() != nullptr && top->get_parent()->get_parent() != nullptr) top = top->get_parent();
      if (names.find(top->get_name()) == std::string::npos) names += (names.empty() ? "" : ", ") + top->get_name();
      registered |= top->get_name() == first;
    }
    if (!registered && planned_issue(first) != nullptr) {
      print_error(first, "'" + first + "' is not part of this build yet",
                  std::string("it is planned under the issue ") + planned_issue(first) + "; this build has: " + names);
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  // A nested command (distill precompute) marks its parent parsed too: run the deepest one.
  auto depth = [](const CLI::App* a) { int d = 0; while ((a = a->get_parent()) != nullptr) ++d; return d; };
  Command* chosen = nullptr;
  for (auto& c : commands)
    if (c->app()->parsed() && (chosen == nullptr || depth(c->app()) > depth(chosen->app()))) chosen = c.get();
  if (chosen == nullptr) return 2;
  try {
    if (!chosen->resolve()) return 0;
    return chosen->run();
  } catch (const Error& e) {
    print_error(chosen->name(), e.what(), e.hint());
  } catch (const c10::Error& e) {
    print_error(chosen->name(), e.what_without_backtrace(), "this is an error inside LibTorch; please report it with the command line");
  } catch (const std::exception& e) {
    print_error(chosen->name(), e.what(), "");
  }
  return 1;
}

}  // namespace bonsai
