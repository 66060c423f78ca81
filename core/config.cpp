#include "core/config.h"

#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/strings.h"

namespace bonsai {
namespace {

std::vector<std::string> split_key(const std::string& key) {
  std::vector<std::string> parts;
  std::string cur;
  for (char c : key) {
    if (c == '.') parts.push_back(cur), cur.clear();
    else cur += c;
  }
  parts.push_back(cur);
  return parts;
}

// The node at a dotted path, or an undefined node. Never creates entries.
YAML::Node lookup(const YAML::Node& root, const std::string& key) {
  YAML::Node cur = YAML::Clone(root);
  for (const auto& p : split_key(key)) {
    if (!cur.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
    YAML::Node next = cur[p];
    if (!next) return YAML::Node(YAML::NodeType::Undefined);
    cur.reset(next);
  }
  return cur;
}

void set_path(YAML::Node& root, const std::string& key, const YAML::Node& value) {
  auto parts = split_key(key);
  YAML::Node cur = root;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    if (!cur[parts[i]] || !cur[parts[i]].IsMap()) cur[parts[i]] = YAML::Node(YAML::NodeType::Map);
    YAML::Node next = cur[parts[i]];
    cur.reset(next);
  }
  cur[parts.back()] = value;
}

template <class T>
T read_scalar(const YAML::Node& n, const std::string& where, const char* type_name) {
  if (!n.IsScalar()) {
    throw Error(where + " must be " + type_name + ", got a " + (n.IsMap() ? "map" : "list"));
  }
  try {
    return n.as<T>();
  } catch (const YAML::Exception&) {
    throw Error(where + " must be " + type_name + ", got '" + n.Scalar() + "'");
  }
}

}  // namespace

void ConfigSchema::add_field(Field f) {
  if (find(f.key) != nullptr) throw Error("internal: config key '" + f.key + "' declared twice");
  fields_.push_back(std::move(f));
}

const ConfigSchema::Field* ConfigSchema::find(const std::string& key) const {
  for (const auto& f : fields_)
    if (f.key == key) return &f;
  return nullptr;
}

void ConfigSchema::add(const std::string& key, std::string* v, const std::string& doc) {
  add_field({key, doc, "string",
             [v](const YAML::Node& n, const std::string& w) { *v = read_scalar<std::string>(n, w, "a string"); },
             [v] { return YAML::Node(*v); }, {}});
}
void ConfigSchema::add(const std::string& key, int64_t* v, const std::string& doc) {
  add_field({key, doc, "int",
             [v](const YAML::Node& n, const std::string& w) { *v = read_scalar<int64_t>(n, w, "an integer"); },
             [v] { return YAML::Node(*v); }, {}});
}
void ConfigSchema::add(const std::string& key, double* v, const std::string& doc) {
  add_field({key, doc, "float",
             [v](const YAML::Node& n, const std::string& w) { *v = read_scalar<double>(n, w, "a number"); },
             [v] { return YAML::Node(*v); }, {}});
}
void ConfigSchema::add(const std::string& key, bool* v, const std::string& doc) {
  add_field({key, doc, "bool",
             [v](const YAML::Node& n, const std::string& w) { *v = read_scalar<bool>(n, w, "true or false"); },
             [v] { return YAML::Node(*v); }, {}});
}
void ConfigSchema::add(const std::string& key, std::vector<std::string>* v, const std::string& doc) {
  add_field({key, doc, "list",
             [v](const YAML::Node& n, const std::string& w) {
               v->clear();
               if (n.IsScalar()) { v->push_back(n.Scalar()); return; }  // "a" == ["a"]
               if (!n.IsSequence()) throw Error(w + " must be a list of strings");
               for (const auto& e : n) v->push_back(read_scalar<std::string>(e, w + " (element)", "a string"));
             },
             [v] {
               YAML::Node n(YAML::NodeType::Sequence);
               for (const auto& s : *v) n.push_back(s);
               return n;
             },
             {}});
}
void ConfigSchema::add(const std::string& key, std::vector<double>* v, const std::string& doc) {
  add_field({key, doc, "list of numbers",
             [v](const YAML::Node& n, const std::string& w) {
               v->clear();
               if (n.IsScalar()) { v->push_back(read_scalar<double>(n, w, "a number")); return; }
               if (!n.IsSequence()) throw Error(w + " must be a list of numbers");
               for (const auto& e : n) v->push_back(read_scalar<double>(e, w + " (element)", "a number"));
             },
             [v] {
               YAML::Node n(YAML::NodeType::Sequence);
               for (double d : *v) n.push_back(d);
               return n;
             },
             {}});
}

void ConfigSchema::add_choice(const std::string& key, std::string* v, std::vector<std::string> choices,
                              const std::string& doc) {
  auto ch = choices;
  add_field({key, doc, "choice",
             [v, ch](const YAML::Node& n, const std::string& w) {
               std::string s = read_scalar<std::string>(n, w, "a string");
               for (const auto& c : ch)
                 if (c == s) { *v = s; return; }
               std::string near = nearest(s, ch);
               throw Error(w + " is '" + s + "', expected one of: " + join(ch, ", "),
                           near.empty() ? "" : "did you mean '" + near + "'?");
             },
             [v] { return YAML::Node(*v); }, std::move(choices)});
}
void ConfigSchema::require(const std::string& key, const std::string& hint) {
  if (find(key) == nullptr) throw Error("internal: required key '" + key + "' is not declared");
  required_.emplace_back(key, hint);
}

std::vector<std::string> ConfigSchema::keys() const {
  std::vector<std::string> k;
  for (const auto& f : fields_) k.push_back(f.key);
  return k;
}

void ConfigSchema::check_unknown(const YAML::Node& node, const std::string& prefix,
                                 const std::string& source) const {
  for (const auto& kv : node) {
    std::string key = prefix.empty() ? kv.first.Scalar() : prefix + "." + kv.first.Scalar();
    if (find(key) != nullptr) continue;
    bool is_section = false;
    for (const auto& f : fields_) is_section |= f.key.rfind(key + ".", 0) == 0;
    if (is_section && kv.second.IsMap()) {
      check_unknown(kv.second, key, source);
      continue;
    }
    if (is_section && kv.second.IsNull()) continue;  // "train:" with nothing under it
    std::string near = nearest(key, keys());
    throw Error(source + ": unknown key '" + key + "'",
                near.empty() ? "valid keys: " + join(keys(), ", ") : "did you mean '" + near + "'?");
  }
}

void ConfigSchema::read(const YAML::Node& root, const std::string& source) const {
  if (root && !root.IsNull() && !root.IsMap()) throw Error(source + ": a config must be a YAML map of keys");
  if (root && root.IsMap()) check_unknown(root, "", source);
  for (const auto& f : fields_) {
    YAML::Node n = lookup(root, f.key);
    if (!n || n.IsNull()) continue;  // keep the default
    f.read(n, source + ": key '" + f.key + "'");
  }
  for (const auto& [key, hint] : required_) {
    const Field* f = find(key);
    YAML::Node v = f->dump();
    if (v.IsNull() || (v.IsScalar() && v.Scalar().empty()) || (v.IsSequence() && v.size() == 0)) {
      throw Error(source + ": key '" + key + "' is required but not set", hint);
    }
  }
}

YAML::Node ConfigSchema::dump() const {
  YAML::Node root(YAML::NodeType::Map);
  for (const auto& f : fields_) set_path(root, f.key, f.dump());
  return root;
}

std::string ConfigSchema::help() const {
  std::string out;
  for (const auto& f : fields_) {
    std::string def = yaml_to_string(f.dump());
    out += "  " + f.key + " = " + (def.empty() ? "''" : def) + "  (" + f.type + ")\n      " + f.doc;
    if (!f.choices.empty()) out += " [" + join(f.choices, ", ") + "]";
    out += "\n";
  }
  return out;
}

YAML::Node load_config_yaml(const std::string& path) {
  if (path.empty()) return YAML::Node(YAML::NodeType::Map);
  std::ifstream in(path);
  if (!in) throw Error("cannot read config '" + path + "'", "check the path given to --config");
  try {
    YAML::Node n = YAML::Load(in);
    return n.IsNull() ? YAML::Node(YAML::NodeType::Map) : n;
  } catch (const YAML::ParserException& e) {
    throw Error("config '" + path + "' is not valid YAML at line " + std::to_string(e.mark.line + 1) +
                ", column " + std::to_string(e.mark.column + 1) + ": " + e.msg);
  }
}

void apply_override(YAML::Node& root, const std::string& assignment) {
  auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) {
    throw Error("cannot read override '" + assignment + "'", "overrides are key.sub=value, e.g. train.max_steps=20");
  }
  std::string key = assignment.substr(0, eq), value = assignment.substr(eq + 1);
  YAML::Node v;
  if (!value.empty() && (value[0] == '[' || value[0] == '{')) {
    try {
      v = YAML::Load(value);
    } catch (const YAML::Exception& e) {
      throw Error("override '" + assignment + "': value is not valid YAML: " + e.msg);
    }
  } else {
    v = YAML::Node(value);
  }
  set_path(root, key, v);
}

void set_literal(YAML::Node& root, const std::string& key, const std::string& value) {
  set_path(root, key, YAML::Node(value));
}

std::string yaml_to_string(const YAML::Node& node) {
  YAML::Emitter out;
  out << node;
  return out.c_str();
}

}  // namespace bonsai
