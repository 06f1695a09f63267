// Instruction-set clones of the CPU kernels' hot loops, shared by the mixed-node and pointwise-convolution
// kernels (the depthwise convolution and pooling pick their AVX2 clone on their own, ops/cpu/flat_plane.h).
//
// The extension is compiled for baseline x86-64 (SSE2). A kernel writes its per-chunk body once, as an
// always-inline lambda (PNF_CHUNK_BODY), and run_chunks compiles it three times, for baseline, AVX2+FMA and
// AVX-512 (F/BW/VL/DQ, 512-bit vectors), running the clone of the chosen level. Float sums taken in another
// vector width (and with FMA) round differently, so results may differ in the last bits between levels.
//   PROXYNAS_CPU_ISA=baseline|avx2|avx512|auto  (read once, at the first call) forces a level;
//   torch.ops.proxynas_fast._set_cpu_isa(name) switches at run time (for tests and benchmarks), and
//   _cpu_isa_levels() lists the levels this CPU and build can run (ops/cpu/cpu_isa.cpp). A level the CPU lacks
//   is an error.
// The functions are inline (not in an anonymous namespace): every kernel file shares the one chosen level.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

namespace proxynas_fast {
namespace cpu_isa {

// Levels are nested: each one's clone may use everything below it.
enum Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };
inline const char* isa_name(int i) {
  static const char* const names[] = {"baseline", "avx2", "avx512"};
  return names[i];
}

#if defined(__x86_64__) && defined(__GNUC__)
#define PNF_HAVE_ISA_CLONES 1
#define PNF_TARGET_AVX2 __attribute__((target("avx2,fma")))
#if defined(__clang__)
#define PNF_TARGET_AVX512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq")))
#else
// GCC's tuning for some AVX-512 cores prefers 256-bit vectors; these loops are long and unit-stride.
#define PNF_TARGET_AVX512 \
  __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,prefer-vector-width=512")))
#endif
#endif

// The best level this CPU and build run (__builtin_cpu_supports also checks that the OS saves the registers).
inline Isa best_isa() {
#ifdef PNF_HAVE_ISA_CLONES
  static const Isa best = [] {
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return kBaseline;
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    return avx512 ? kAvx512 : kAvx2;
  }();
  return best;
#else
  return kBaseline;
#endif
}

// "auto" is the best level; naming a level the CPU lacks, or an unknown one, is an error.
inline Isa parse_isa(const std::string& name) {
  if (name == "auto") return best_isa();
  for (int i = kBaseline; i <= kAvx512; ++i) {
    if (name != isa_name(i)) continue;
    TORCH_CHECK(i <= best_isa(), "cpu isa '", name, "' is not available on this CPU/build (best: ",
                isa_name(best_isa()), ")");
    return static_cast<Isa>(i);
  }
  TORCH_CHECK(false, "unknown cpu isa '", name, "': expected baseline, avx2, avx512 or auto");
}

// The level the kernels run with: PROXYNAS_CPU_ISA if set (read at the first call), else the best. A bad value
// is an error that names the variable, at every call until _set_cpu_isa sets a level (which always succeeds for
// a valid name, whatever the variable says).
constexpr int kUnset = -1;
inline std::atomic<int>& isa_slot() {
  static std::atomic<int> slot{kUnset};
  return slot;
}

inline Isa isa_from_environment() {
  const char* env = std::getenv("PROXYNAS_CPU_ISA");
  if (env == nullptr || *env == '\0') return best_isa();
  try {
    return parse_isa(env);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "PROXYNAS_CPU_ISA=", env, ": ", e.what_without_backtrace());
  }
}

inline Isa current_isa() {
  int isa = isa_slot().load(std::memory_order_relaxed);
  if (isa == kUnset) {
    int expected = kUnset;
    isa_slot().compare_exchange_strong(expected, static_cast<int>(isa_from_environment()));
    isa = isa_slot().load(std::memory_order_relaxed);
  }
  return static_cast<Isa>(isa);
}

// A kernel's chunk body, `body(begin, end)`, is an always-inline lambda (PNF_CHUNK_BODY), so each of these
// wrappers compiles its own copy of the loops for its instruction set. The body may be a generic lambda taking
// the level as a compile-time tag first (`body(tag, begin, end)` with decltype(tag)::value the Isa): then it can
// pick tile sizes per level. run_chunks accepts both forms.
#define PNF_CHUNK_BODY __attribute__((always_inline))
#define PNF_INLINE_CHUNK inline __attribute__((always_inline))
template <int L>
struct IsaTag {
  static constexpr int value = L;
};

template <int L, typename Body>
PNF_INLINE_CHUNK void call_body(const Body& body, int64_t begin, int64_t end) {
  if constexpr (std::is_invocable_v<const Body&, IsaTag<L>, int64_t, int64_t>) {
    body(IsaTag<L>{}, begin, end);
  } else {
    body(begin, end);
  }
}

template <typename Body>
void chunks_baseline(const Body& body, int64_t begin, int64_t end) {
  call_body<kBaseline>(body, begin, end);
}
#ifdef PNF_HAVE_ISA_CLONES
template <typename Body>
PNF_TARGET_AVX2 void chunks_avx2(const Body& body, int64_t begin, int64_t end) {
  call_body<kAvx2>(body, begin, end);
}
template <typename Body>
PNF_TARGET_AVX512 void chunks_avx512(const Body& body, int64_t begin, int64_t end) {
  call_body<kAvx512>(body, begin, end);
}
#endif

// at::parallel_for over [0, n) running the clone of `body` for the chosen level.
template <typename Body>
void run_chunks(int64_t n, int64_t grain, const Body& body) {
  void (*clone)(const Body&, int64_t, int64_t) = chunks_baseline<Body>;
#ifdef PNF_HAVE_ISA_CLONES
  const int isa = static_cast<int>(current_isa());
  if (isa == kAvx512) clone = chunks_avx512<Body>;
  if (isa == kAvx2) clone = chunks_avx2<Body>;
#endif
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) { clone(body, begin, end); });
}

}  // namespace cpu_isa
}  // namespace proxynas_fast
