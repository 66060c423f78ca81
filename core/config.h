// Configs are data: every command declares its keys once in a ConfigSchema, and parsing, defaults,
// `key.sub=value` overrides, unknown-key errors ("did you mean ...") and `--validate` printing all
// come from that one declaration. Keys are dotted paths into a YAML document.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace bonsai {

class ConfigSchema {
 public:
  void add(const std::string& key, std::string* v, const std::string& doc);
  void add(const std::string& key, int64_t* v, const std::string& doc);
  void add(const std::string& key, double* v, const std::string& doc);
  void add(const std::string& key, bool* v, const std::string& doc);
  void add(const std::string& key, std::vector<std::string>* v, const std::string& doc);
  void add(const std::string& key, std::vector<double>* v, const std::string& doc);
  // A string that must be one of `choices`.
  void add_choice(const std::string& key, std::string* v, std::vector<std::string> choices,
                  const std::string& doc);
  // The key must end up non-empty (after the file and the overrides).
  void require(const std::string& key, const std::string& hint);

  std::vector<std::string> keys() const;
  // Reads `root` into the targets. `source` names where it came from ("configs/3b.yaml + overrides")
  // for errors. Unknown keys, wrong types, bad choices and missing required keys throw bonsai::Error.
  void read(const YAML::Node& root, const std::string& source) const;
  YAML::Node dump() const;   // the resolved values, in declaration order
  std::string help() const;  // one line per key: "key (default): doc"

 private:
  struct Field {
    std::string key, doc, type;
    std::function<void(const YAML::Node&, const std::string& where)> read;
    std::function<YAML::Node()> dump;
    std::vector<std::string> choices;
  };
  void add_field(Field f);
  const Field* find(const std::string& key) const;
  void check_unknown(const YAML::Node& node, const std::string& prefix, const std::string& source) const;
  std::vector<Field> fields_;
  std::vector<std::pair<std::string, std::string>> required_;  // key, hint
};

// Reads a YAML config file (an empty map for ""). Errors name the file and the line.
YAML::Node load_config_yaml(const std::string& path);
// Applies one "a.b.c=value" override. `value` is read as YAML when it starts with '[' or '{', as a
// plain scalar otherwise (so paths with ':' stay strings).
void apply_override(YAML::Node& root, const std::string& assignment);
// Sets `key` to the plain string `value` (command-line flags: "--prompt '[INST] hi'" stays text).
void set_literal(YAML::Node& root, const std::string& key, const std::string& value);
std::string yaml_to_string(const YAML::Node& node);

}  // namespace bonsai
