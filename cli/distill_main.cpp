// `distill ...` is `bonsai distill ...`, so `distill --config configs/3b.yaml` works as written.
#include <vector>

#include "cli/command.h"

int main(int argc, char** argv) {
  std::vector<char*> args{argv[0], const_cast<char*>("distill")};
  for (int i = 1; i < argc; ++i) args.push_back(argv[i]);
  return bonsai::bonsai_main(static_cast<int>(args.size()), args.data());
}
