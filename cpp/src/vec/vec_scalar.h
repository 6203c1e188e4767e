// One-lane "vector": the scalar ISA, and every ISA's tail. The operations are the
// same correctly rounded IEEE operations as the SIMD types, so a tail element gets
// exactly the bits a vector lane would. Defined inside the including file's ISA
// namespace (ADAMCORE_NS) so no inline function is shared between files compiled
// with different instruction sets.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace adamcore::ADAMCORE_NS {

struct VecScalar {
  static constexpr std::size_t kLanes = 1;
  float x;
  static VecScalar load(const float* p) { return {*p}; }
  static VecScalar set1(float v) { return {v}; }
};

inline void store(float* p, VecScalar a) { *p = a.x; }
inline VecScalar add(VecScalar a, VecScalar b) { return {a.x + b.x}; }
inline VecScalar sub(VecScalar a, VecScalar b) { return {a.x - b.x}; }
inline VecScalar mul(VecScalar a, VecScalar b) { return {a.x * b.x}; }
inline VecScalar div(VecScalar a, VecScalar b) { return {a.x / b.x}; }
inline VecScalar sqrt(VecScalar a) { return {__builtin_sqrtf(a.x)}; }
// a*b + c with one rounding.
inline VecScalar fma(VecScalar a, VecScalar b, VecScalar c) {
  return {__builtin_fmaf(a.x, b.x, c.x)};
}
// Flips the sign bit where mask has it (maximize: g = -g, exact, NaN included).
inline VecScalar flip_sign(VecScalar a, std::uint32_t mask) {
  std::uint32_t bits;
  std::memcpy(&bits, &a.x, 4);
  bits ^= mask;
  std::memcpy(&a.x, &bits, 4);
  return a;
}
// torch's maximum on x86: a > b ? a : b, and a NaN (all bits set) if either is NaN.
inline VecScalar maximum(VecScalar a, VecScalar b) {
  if (a.x != a.x || b.x != b.x) {
    const std::uint32_t nan_bits = 0xFFFFFFFFu;
    float nan;
    std::memcpy(&nan, &nan_bits, 4);
    return {nan};
  }
  return {a.x > b.x ? a.x : b.x};
}
// Diagnostics: running min/max that skip NaN (x < acc is false for NaN).
inline VecScalar keep_min(VecScalar acc, VecScalar x) { return {x.x < acc.x ? x.x : acc.x}; }
inline VecScalar keep_max(VecScalar acc, VecScalar x) { return {x.x > acc.x ? x.x : acc.x}; }
inline std::uint32_t count_negative(VecScalar a) { return a.x < 0.0f ? 1u : 0u; }
inline std::uint32_t count_nan(VecScalar a) { return a.x != a.x ? 1u : 0u; }
inline float reduce_min(VecScalar a) { return a.x; }
inline float reduce_max(VecScalar a) { return a.x; }

}  // namespace adamcore::ADAMCORE_NS
