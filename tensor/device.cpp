#include "tensor/device.h"

#include <cctype>

#include "tensor/error.h"

namespace lamina {

Device Device::parse(const std::string& text) {
  if (text == "cpu") return cpu();
  if (text == "cuda") return cuda(0);
  const std::string prefix = "cuda:";
  if (text.size() > prefix.size() && text.size() <= prefix.size() + 4 && text.compare(0, prefix.size(), prefix) == 0) {
    int index = 0;
    bool digits = true;
    for (size_t i = prefix.size(); i < text.size(); ++i) {
      digits = digits && std::isdigit(static_cast<unsigned char>(text[i]));
      index = index * 10 + (text[i] - '0');
    }
    if (digits) return cuda(index);
  }
  throw Error("unknown device '" + text + "' (expected cpu, cuda or cuda:N)");
}

}  // namespace lamina
