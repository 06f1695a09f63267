// Fixed-width vectors through GCC/Clang vector extensions, the CPU kernels' register tiles: plain loops over a
// fixed tile are not reliably vectorised when a loop around them has a run-time trip count. Loads and stores
// are unaligned (aligned(sizeof(T))) and may alias the buffers they read (may_alias).
//   VecOf<T, B>::type   B bytes of T (16, 32 or 64: SSE, AVX2, AVX-512 registers in the matching clone)
//   MaskOf<T, B>::type  the integer vector with the same lanes, to clear lanes bitwise (exact: no 0 * Inf)
#pragma once
#include <cstdint>

namespace proxynas_fast {

template <typename T, int B>
struct VecOf {
  typedef T type __attribute__((vector_size(B), aligned(sizeof(T)), may_alias));
};

template <typename T>
struct LaneInt;
template <>
struct LaneInt<float> {
  typedef int32_t type;
};
template <>
struct LaneInt<double> {
  typedef int64_t type;
};

// A primary template on purpose: GCC drops may_alias from a typedef in a partial specialisation on B.
template <typename T, int B>
struct MaskOf {
  typedef typename LaneInt<T>::type type __attribute__((vector_size(B), aligned(sizeof(T)), may_alias));
};

}  // namespace proxynas_fast
