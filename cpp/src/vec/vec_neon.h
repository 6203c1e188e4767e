// NEON (aarch64): 4 floats (2 doubles). See vec_scalar.h for what each operation must mean.
#pragma once

#include <arm_neon.h>

#include <cstddef>
#include <cstdint>

#include "kernel_api.h"

namespace adamcore::ADAMCORE_NS {

// Four uint32 lanes: the bit-level operations of stochastic rounding (kernels.inl).
struct VecNeonU32 {
  static constexpr std::size_t kLanes = 4;
  uint32x4_t r;
  static VecNeonU32 set1(std::uint32_t v) { return {vdupq_n_u32(v)}; }
  static VecNeonU32 iota(std::uint32_t start) {
    static const std::uint32_t kLane[4] = {0, 1, 2, 3};
    return {vaddq_u32(vdupq_n_u32(start), vld1q_u32(kLane))};
  }
};
inline VecNeonU32 add(VecNeonU32 a, VecNeonU32 b) { return {vaddq_u32(a.r, b.r)}; }
inline VecNeonU32 mul_lo(VecNeonU32 a, VecNeonU32 b) { return {vmulq_u32(a.r, b.r)}; }
inline VecNeonU32 bit_xor(VecNeonU32 a, VecNeonU32 b) { return {veorq_u32(a.r, b.r)}; }
inline VecNeonU32 bit_and(VecNeonU32 a, VecNeonU32 b) { return {vandq_u32(a.r, b.r)}; }
inline VecNeonU32 bit_or(VecNeonU32 a, VecNeonU32 b) { return {vorrq_u32(a.r, b.r)}; }
template <int N>
inline VecNeonU32 shift_right(VecNeonU32 a) {
  return {vshrq_n_u32(a.r, N)};
}

struct VecNeon {
  static constexpr std::size_t kLanes = 4;
  using Bits = VecNeonU32;
  float32x4_t r;
  static VecNeon load(const float* p) { return {vld1q_f32(p)}; }
  static VecNeon load(const detail::Bf16* p) {  // exact: the bits become the top half
    const uint16x4_t h = vld1_u16(reinterpret_cast<const std::uint16_t*>(p));
    return {vreinterpretq_f32_u32(vshlq_n_u32(vmovl_u16(h), 16))};
  }
  static VecNeon load(const detail::F16* p) {  // exact
    const uint16x4_t h = vld1_u16(reinterpret_cast<const std::uint16_t*>(p));
    return {vcvt_f32_f16(vreinterpret_f16_u16(h))};
  }
  static VecNeon set1(float v) { return {vdupq_n_f32(v)}; }
};

inline void store(float* p, VecNeon a) { vst1q_f32(p, a.r); }
// Round to nearest even by integer arithmetic, NaN kept quiet: vec_scalar.h's
// float_to_bf16, four at a time.
inline void store(detail::Bf16* p, VecNeon a) {
  const uint32x4_t b = vreinterpretq_u32_f32(a.r);
  const uint32x4_t high = vshrq_n_u32(b, 16);
  const uint32x4_t odd = vandq_u32(high, vdupq_n_u32(1));
  const uint32x4_t rounded = vshrq_n_u32(vaddq_u32(vaddq_u32(b, vdupq_n_u32(0x7FFF)), odd), 16);
  const uint32x4_t quiet_nan = vorrq_u32(high, vdupq_n_u32(0x40));
  const uint32x4_t is_number = vceqq_f32(a.r, a.r);
  vst1_u16(reinterpret_cast<std::uint16_t*>(p), vmovn_u32(vbslq_u32(is_number, rounded, quiet_nan)));
}
// vec_scalar.h's float_to_bf16_stochastic, four at a time.
inline void store_stochastic(detail::Bf16* p, VecNeon a, VecNeonU32 r) {
  const uint32x4_t b = vreinterpretq_u32_f32(a.r);
  const uint32x4_t carried = vshrq_n_u32(vaddq_u32(b, vshrq_n_u32(r.r, 16)), 16);
  const uint32x4_t quiet_nan = vorrq_u32(vshrq_n_u32(b, 16), vdupq_n_u32(0x40));
  const uint32x4_t is_number = vceqq_f32(a.r, a.r);
  vst1_u16(reinterpret_cast<std::uint16_t*>(p), vmovn_u32(vbslq_u32(is_number, carried, quiet_nan)));
}
inline void store(detail::F16* p, VecNeon a) {  // FPCR's rounding: nearest even by default
  vst1_u16(reinterpret_cast<std::uint16_t*>(p), vreinterpret_u16_f16(vcvt_f16_f32(a.r)));
}
inline VecNeon add(VecNeon a, VecNeon b) { return {vaddq_f32(a.r, b.r)}; }
inline VecNeon sub(VecNeon a, VecNeon b) { return {vsubq_f32(a.r, b.r)}; }
inline VecNeon mul(VecNeon a, VecNeon b) { return {vmulq_f32(a.r, b.r)}; }
inline VecNeon div(VecNeon a, VecNeon b) { return {vdivq_f32(a.r, b.r)}; }
inline VecNeon sqrt(VecNeon a) { return {vsqrtq_f32(a.r)}; }
// vfmaq_f32(c, a, b) = c + a*b with one rounding.
inline VecNeon fma(VecNeon a, VecNeon b, VecNeon c) { return {vfmaq_f32(c.r, a.r, b.r)}; }
inline VecNeon flip_sign(VecNeon a, std::uint32_t mask) {
  return {vreinterpretq_f32_u32(veorq_u32(vreinterpretq_u32_f32(a.r), vdupq_n_u32(mask)))};
}
// Not vmaxq_f32: its NaN and signed-zero choices differ from torch's x86 maximum.
inline VecNeon maximum(VecNeon a, VecNeon b) {
  const float32x4_t larger = vbslq_f32(vcgtq_f32(a.r, b.r), a.r, b.r);
  const uint32x4_t ordered = vandq_u32(vceqq_f32(a.r, a.r), vceqq_f32(b.r, b.r));
  return {vreinterpretq_f32_u32(vornq_u32(vreinterpretq_u32_f32(larger), ordered))};
}
inline VecNeon keep_min(VecNeon acc, VecNeon x) { return {vbslq_f32(vcltq_f32(x.r, acc.r), x.r, acc.r)}; }
inline VecNeon keep_max(VecNeon acc, VecNeon x) { return {vbslq_f32(vcgtq_f32(x.r, acc.r), x.r, acc.r)}; }
inline std::uint32_t count_negative(VecNeon a) {
  const uint32x4_t ones = vshrq_n_u32(vcltq_f32(a.r, vdupq_n_f32(0.0f)), 31);
  return vaddvq_u32(ones);
}
inline std::uint32_t count_nan(VecNeon a) {
  const uint32_t ordered = vaddvq_u32(vshrq_n_u32(vceqq_f32(a.r, a.r), 31));
  return 4u - ordered;
}
inline float reduce_min(VecNeon a) {
  float lanes[4];
  vst1q_f32(lanes, a.r);
  float m = lanes[0];
  for (float x : lanes) m = x < m ? x : m;
  return m;
}
inline float reduce_max(VecNeon a) {
  float lanes[4];
  vst1q_f32(lanes, a.r);
  float m = lanes[0];
  for (float x : lanes) m = x > m ? x : m;
  return m;
}
inline VecNeonU32 as_bits(VecNeon a) { return {vreinterpretq_u32_f32(a.r)}; }
inline VecNeon from_bits(VecNeonU32 b) { return {vreinterpretq_f32_u32(b.r)}; }
inline VecNeon to_float(VecNeonU32 b) { return {vcvtq_f32_u32(b.r)}; }  // b < 2^24
inline VecNeon trunc(VecNeon a) { return {vrndq_f32(a.r)}; }
inline VecNeonU32 nan_mask(VecNeon a) { return {vmvnq_u32(vceqq_f32(a.r, a.r))}; }
inline VecNeonU32 less_mask(VecNeon a, VecNeon b) { return {vcltq_f32(a.r, b.r)}; }
inline VecNeon select(VecNeonU32 mask, VecNeon if_set, VecNeon if_clear) {
  return {vbslq_f32(mask.r, if_set.r, if_clear.r)};
}

// Two doubles: the float64 layout.
struct VecNeonF64 {
  static constexpr std::size_t kLanes = 2;
  float64x2_t r;
  static VecNeonF64 load(const double* p) { return {vld1q_f64(p)}; }
  static VecNeonF64 set1(double v) { return {vdupq_n_f64(v)}; }
};

inline void store(double* p, VecNeonF64 a) { vst1q_f64(p, a.r); }
inline VecNeonF64 add(VecNeonF64 a, VecNeonF64 b) { return {vaddq_f64(a.r, b.r)}; }
inline VecNeonF64 sub(VecNeonF64 a, VecNeonF64 b) { return {vsubq_f64(a.r, b.r)}; }
inline VecNeonF64 mul(VecNeonF64 a, VecNeonF64 b) { return {vmulq_f64(a.r, b.r)}; }
inline VecNeonF64 div(VecNeonF64 a, VecNeonF64 b) { return {vdivq_f64(a.r, b.r)}; }
inline VecNeonF64 sqrt(VecNeonF64 a) { return {vsqrtq_f64(a.r)}; }
inline VecNeonF64 fma(VecNeonF64 a, VecNeonF64 b, VecNeonF64 c) { return {vfmaq_f64(c.r, a.r, b.r)}; }
inline VecNeonF64 flip_sign(VecNeonF64 a, std::uint32_t mask) {
  const uint64x2_t m = vdupq_n_u64(std::uint64_t{mask} << 32);
  return {vreinterpretq_f64_u64(veorq_u64(vreinterpretq_u64_f64(a.r), m))};
}
inline VecNeonF64 maximum(VecNeonF64 a, VecNeonF64 b) {
  const float64x2_t larger = vbslq_f64(vcgtq_f64(a.r, b.r), a.r, b.r);
  const uint64x2_t ordered = vandq_u64(vceqq_f64(a.r, a.r), vceqq_f64(b.r, b.r));
  const uint64x2_t unordered = veorq_u64(ordered, vdupq_n_u64(~std::uint64_t{0}));
  return {vreinterpretq_f64_u64(vorrq_u64(vreinterpretq_u64_f64(larger), unordered))};
}
inline VecNeonF64 keep_min(VecNeonF64 acc, VecNeonF64 x) { return {vbslq_f64(vcltq_f64(x.r, acc.r), x.r, acc.r)}; }
inline VecNeonF64 keep_max(VecNeonF64 acc, VecNeonF64 x) { return {vbslq_f64(vcgtq_f64(x.r, acc.r), x.r, acc.r)}; }
inline std::uint32_t count_negative(VecNeonF64 a) {
  return static_cast<std::uint32_t>(vaddvq_u64(vshrq_n_u64(vcltq_f64(a.r, vdupq_n_f64(0.0)), 63)));
}
inline std::uint32_t count_nan(VecNeonF64 a) {
  return 2u - static_cast<std::uint32_t>(vaddvq_u64(vshrq_n_u64(vceqq_f64(a.r, a.r), 63)));
}
inline double reduce_min(VecNeonF64 a) {
  const double x = vgetq_lane_f64(a.r, 0), y = vgetq_lane_f64(a.r, 1);
  return y < x ? y : x;
}
inline double reduce_max(VecNeonF64 a) {
  const double x = vgetq_lane_f64(a.r, 0), y = vgetq_lane_f64(a.r, 1);
  return y > x ? y : x;
}

// ---- The gradient norm (norm.inl): two elements widened to double (exact); the
// 16-bit loads read exactly two elements.
inline VecNeonF64 widen_load(VecNeonF64, const float* p) { return {vcvt_f64_f32(vld1_f32(p))}; }
inline VecNeonF64 widen_load(VecNeonF64, const double* p) { return {vld1q_f64(p)}; }
inline VecNeonF64 widen_load(VecNeonF64, const detail::Bf16* p) {
  const std::uint64_t w = (std::uint64_t{p[0].bits} << 16) | (std::uint64_t{p[1].bits} << 48);
  return {vcvt_f64_f32(vreinterpret_f32_u64(vcreate_u64(w)))};
}
inline VecNeonF64 widen_load(VecNeonF64, const detail::F16* p) {
  const std::uint64_t w = std::uint64_t{p[0].bits} | (std::uint64_t{p[1].bits} << 16);
  return {vcvt_f64_f32(vget_low_f32(vcvt_f32_f16(vreinterpret_f16_u64(vcreate_u64(w)))))};
}
inline VecNeonF64 absolute(VecNeonF64 a) { return {vabsq_f64(a.r)}; }

}  // namespace adamcore::ADAMCORE_NS
