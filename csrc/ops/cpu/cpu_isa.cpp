// The ops that inspect and switch the CPU kernels' instruction-set level (ops/cpu/cpu_isa.h). Device-independent
// (no tensor argument): defined as catch-all ops.
#include <torch/library.h>

#include <string>
#include <vector>

#include "ops/cpu/cpu_isa.h"

namespace proxynas_fast {
namespace {
using namespace cpu_isa;

// _set_cpu_isa: forces a level for all later calls, returns the previous one ("auto" when no kernel had run and
// the environment named no valid level).
std::string set_cpu_isa(std::string name) {
  const int previous = isa_slot().exchange(static_cast<int>(parse_isa(name)));
  return previous == kUnset ? std::string("auto") : std::string(isa_name(previous));
}

// _cpu_isa_levels: the levels this CPU and build run, baseline first, best last.
std::vector<std::string> cpu_isa_levels() {
  std::vector<std::string> out;
  for (int i = kBaseline; i <= best_isa(); ++i) out.push_back(isa_name(i));
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(proxynas_fast, m) {
  m.def("_set_cpu_isa(str isa) -> str", &set_cpu_isa);
  m.def("_cpu_isa_levels() -> str[]", &cpu_isa_levels);
}

}  // namespace proxynas_fast
