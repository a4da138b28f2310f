// lamina: one executable, many subcommands.
#include <cstdio>
#include <cstring>
#include <string>

#include "tensor/error.h"

int main(int argc, char** argv) {
  std::printf("lamina %s\n", LAMINA_VERSION);
  return 0;
}
