// One-lane "vector": the scalar ISA, and every ISA's tail. The operations are the
// same correctly rounded IEEE operations as the SIMD types, so a tail element gets
// exactly the bits a vector lane would. Defined inside the including file's ISA
// namespace (ADAMCORE_NS) so no inline function is shared between files compiled
// with different instruction sets.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernel_api.h"

namespace adamcore::ADAMCORE_NS {

// ---- 16-bit <-> float32 conversions in integer arithmetic (no F16C, no FP mode).
// Round to nearest even; a NaN stays a quiet NaN of the same sign (payloads are not
// part of the contract). The SIMD types implement exactly these functions.
inline std::uint32_t float_bits(float x) {
  std::uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}
inline float float_from_bits(std::uint32_t b) {
  float x;
  std::memcpy(&x, &b, 4);
  return x;
}
inline float bf16_to_float(std::uint16_t h) { return float_from_bits(std::uint32_t{h} << 16); }
inline std::uint16_t float_to_bf16(float x) {
  const std::uint32_t b = float_bits(x);
  if ((b & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<std::uint16_t>((b >> 16) | 0x40u);
  return static_cast<std::uint16_t>((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}
// float32 -> bfloat16 rounded stochastically with 32 random bits r: the 16 dropped bits
// plus r's top 16 carry into the kept half or not, so x rounds away from zero with
// probability (its distance from the lower value) / ulp. A NaN gives float_to_bf16's
// quiet NaN. The sum cannot overflow: the largest non-NaN pattern is -Inf, 0xFF800000.
// (This is rounding to a bfloat16 value, then storing that to nearest: the second
// rounding of a value whose low half is zero changes nothing; the C++ tests check it.)
inline std::uint16_t float_to_bf16_stochastic(float x, std::uint32_t r) {
  const std::uint32_t b = float_bits(x);
  if ((b & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<std::uint16_t>((b >> 16) | 0x40u);
  return static_cast<std::uint16_t>((b + (r >> 16)) >> 16);
}
inline float f16_to_float(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t{h & 0x8000u} << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1Fu;
  const std::uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0x1F) {  // Inf, or a NaN made quiet (as F16C and NEON do)
    return float_from_bits(sign | 0x7F800000u | (mantissa << 13) | (mantissa ? 0x400000u : 0u));
  }
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float32
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return sign ? -magnitude : magnitude;
  }
  return float_from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}
inline std::uint16_t float_to_f16(float x) {
  const std::uint32_t b = float_bits(x);
  const std::uint32_t sign = (b >> 16) & 0x8000u;
  const std::uint32_t a = b & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return static_cast<std::uint16_t>(sign | 0x7E00u | ((a >> 13) & 0x3FFu));
  if (a >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);  // >= 65520: Inf
  if (a >= 0x38800000u) {  // a normal half: rebias the exponent, round at bit 13
    const std::uint32_t r = a - (112u << 23);
    return static_cast<std::uint16_t>(sign | ((r + 0xFFFu + ((r >> 13) & 1u)) >> 13));
  }
  if (a <= 0x33000000u) return static_cast<std::uint16_t>(sign);  // <= 2^-25: rounds to 0
  // A subnormal half: the value in units of 2^-24, rounded to nearest even.
  const std::uint32_t mantissa = (a & 0x7FFFFFu) | 0x800000u;
  const std::uint32_t shift = 126u - (a >> 23);  // 14..24
  std::uint32_t q = mantissa >> shift;
  const std::uint32_t rest = mantissa & ((1u << shift) - 1u);
  const std::uint32_t half = 1u << (shift - 1u);
  if (rest > half || (rest == half && (q & 1u))) ++q;
  return static_cast<std::uint16_t>(sign | q);
}

// One uint32 lane: the bit-level operations of stochastic rounding (kernels.inl).
struct VecScalarU32 {
  static constexpr std::size_t kLanes = 1;
  std::uint32_t x;
  static VecScalarU32 set1(std::uint32_t v) { return {v}; }
  static VecScalarU32 iota(std::uint32_t start) { return {start}; }  // start + lane
};
inline VecScalarU32 add(VecScalarU32 a, VecScalarU32 b) { return {a.x + b.x}; }
inline VecScalarU32 mul_lo(VecScalarU32 a, VecScalarU32 b) { return {a.x * b.x}; }
inline VecScalarU32 bit_xor(VecScalarU32 a, VecScalarU32 b) { return {a.x ^ b.x}; }
inline VecScalarU32 bit_and(VecScalarU32 a, VecScalarU32 b) { return {a.x & b.x}; }
inline VecScalarU32 bit_or(VecScalarU32 a, VecScalarU32 b) { return {a.x | b.x}; }
template <int N>
inline VecScalarU32 shift_right(VecScalarU32 a) {
  return {a.x >> N};
}

struct VecScalar {
  static constexpr std::size_t kLanes = 1;
  using Bits = VecScalarU32;
  float x;
  static VecScalar load(const float* p) { return {*p}; }
  static VecScalar load(const detail::Bf16* p) { return {bf16_to_float(p->bits)}; }
  static VecScalar load(const detail::F16* p) { return {f16_to_float(p->bits)}; }
  static VecScalar set1(float v) { return {v}; }
};

inline void store(float* p, VecScalar a) { *p = a.x; }
inline void store(detail::Bf16* p, VecScalar a) { p->bits = float_to_bf16(a.x); }
inline void store(detail::F16* p, VecScalar a) { p->bits = float_to_f16(a.x); }
inline void store_stochastic(detail::Bf16* p, VecScalar a, VecScalarU32 r) {
  p->bits = float_to_bf16_stochastic(a.x, r.x);
}
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
// Bit-level views and masks (a mask lane is all ones or all zeros).
inline VecScalarU32 as_bits(VecScalar a) { return {float_bits(a.x)}; }
inline VecScalar from_bits(VecScalarU32 b) { return {float_from_bits(b.x)}; }
inline VecScalar to_float(VecScalarU32 b) { return {static_cast<float>(b.x)}; }  // b < 2^24
inline VecScalar trunc(VecScalar a) { return {__builtin_truncf(a.x)}; }
inline VecScalarU32 nan_mask(VecScalar a) { return {a.x != a.x ? 0xFFFFFFFFu : 0u}; }
inline VecScalarU32 less_mask(VecScalar a, VecScalar b) { return {a.x < b.x ? 0xFFFFFFFFu : 0u}; }
inline VecScalar select(VecScalarU32 mask, VecScalar if_set, VecScalar if_clear) {
  return {mask.x ? if_set.x : if_clear.x};
}

// The same operations on one double: the float64 layout's scalar ISA and tail.
struct VecScalarF64 {
  static constexpr std::size_t kLanes = 1;
  double x;
  static VecScalarF64 load(const double* p) { return {*p}; }
  static VecScalarF64 set1(double v) { return {v}; }
};

inline void store(double* p, VecScalarF64 a) { *p = a.x; }
inline VecScalarF64 add(VecScalarF64 a, VecScalarF64 b) { return {a.x + b.x}; }
inline VecScalarF64 sub(VecScalarF64 a, VecScalarF64 b) { return {a.x - b.x}; }
inline VecScalarF64 mul(VecScalarF64 a, VecScalarF64 b) { return {a.x * b.x}; }
inline VecScalarF64 div(VecScalarF64 a, VecScalarF64 b) { return {a.x / b.x}; }
inline VecScalarF64 sqrt(VecScalarF64 a) { return {__builtin_sqrt(a.x)}; }
inline VecScalarF64 fma(VecScalarF64 a, VecScalarF64 b, VecScalarF64 c) {
  return {__builtin_fma(a.x, b.x, c.x)};
}
// mask is the sign word of a float (0x80000000 or 0); a double's sign is bit 63.
inline VecScalarF64 flip_sign(VecScalarF64 a, std::uint32_t mask) {
  std::uint64_t bits;
  std::memcpy(&bits, &a.x, 8);
  bits ^= std::uint64_t{mask} << 32;
  std::memcpy(&a.x, &bits, 8);
  return a;
}
inline VecScalarF64 maximum(VecScalarF64 a, VecScalarF64 b) {
  if (a.x != a.x || b.x != b.x) {
    const std::uint64_t nan_bits = ~std::uint64_t{0};
    double nan;
    std::memcpy(&nan, &nan_bits, 8);
    return {nan};
  }
  return {a.x > b.x ? a.x : b.x};
}
inline VecScalarF64 keep_min(VecScalarF64 acc, VecScalarF64 x) { return {x.x < acc.x ? x.x : acc.x}; }
inline VecScalarF64 keep_max(VecScalarF64 acc, VecScalarF64 x) { return {x.x > acc.x ? x.x : acc.x}; }
inline std::uint32_t count_negative(VecScalarF64 a) { return a.x < 0.0 ? 1u : 0u; }
inline std::uint32_t count_nan(VecScalarF64 a) { return a.x != a.x ? 1u : 0u; }
inline double reduce_min(VecScalarF64 a) { return a.x; }
inline double reduce_max(VecScalarF64 a) { return a.x; }

// ---- The gradient norm (norm.inl): VecF64::kLanes elements widened to double
// (exact), the overload chosen by the tag's type; |x| by clearing the sign bit.
inline VecScalarF64 widen_load(VecScalarF64, const float* p) { return {static_cast<double>(*p)}; }
inline VecScalarF64 widen_load(VecScalarF64, const double* p) { return {*p}; }
inline VecScalarF64 widen_load(VecScalarF64, const detail::Bf16* p) {
  return {static_cast<double>(bf16_to_float(p->bits))};
}
inline VecScalarF64 widen_load(VecScalarF64, const detail::F16* p) {
  return {static_cast<double>(f16_to_float(p->bits))};
}
inline VecScalarF64 absolute(VecScalarF64 a) {
  std::uint64_t bits;
  std::memcpy(&bits, &a.x, 8);
  bits &= ~(std::uint64_t{1} << 63);
  std::memcpy(&a.x, &bits, 8);
  return a;
}

}  // namespace adamcore::ADAMCORE_NS
