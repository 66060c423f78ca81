// `bonsai <command>`: the single entry point of the toolkit. See cli/command.h for the conventions.
#include "cli/command.h"

int main(int argc, char** argv) { return bonsai::bonsai_main(argc, argv); }
