// NEON (aarch64): 4 lanes. See vec_scalar.h for what each operation must mean.
#pragma once

#include <arm_neon.h>

#include <cstddef>
#include <cstdint>

namespace adamcore::ADAMCORE_NS {

struct VecNeon {
  static constexpr std::size_t kLanes = 4;
  float32x4_t r;
  static VecNeon load(const float* p) { return {vld1q_f32(p)}; }
  static VecNeon set1(float v) { return {vdupq_n_f32(v)}; }
};

inline void store(float* p, VecNeon a) { vst1q_f32(p, a.r); }
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

}  // namespace adamcore::ADAMCORE_NS
