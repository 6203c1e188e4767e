// AVX-512 (F): 16 lanes. See vec_scalar.h for what each operation must mean.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

namespace adamcore::ADAMCORE_NS {

struct VecAvx512 {
  static constexpr std::size_t kLanes = 16;
  __m512 r;
  static VecAvx512 load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static VecAvx512 set1(float v) { return {_mm512_set1_ps(v)}; }
};

inline void store(float* p, VecAvx512 a) { _mm512_storeu_ps(p, a.r); }
inline VecAvx512 add(VecAvx512 a, VecAvx512 b) { return {_mm512_add_ps(a.r, b.r)}; }
inline VecAvx512 sub(VecAvx512 a, VecAvx512 b) { return {_mm512_sub_ps(a.r, b.r)}; }
inline VecAvx512 mul(VecAvx512 a, VecAvx512 b) { return {_mm512_mul_ps(a.r, b.r)}; }
inline VecAvx512 div(VecAvx512 a, VecAvx512 b) { return {_mm512_div_ps(a.r, b.r)}; }
inline VecAvx512 sqrt(VecAvx512 a) { return {_mm512_sqrt_ps(a.r)}; }
inline VecAvx512 fma(VecAvx512 a, VecAvx512 b, VecAvx512 c) {
  return {_mm512_fmadd_ps(a.r, b.r, c.r)};
}
inline VecAvx512 flip_sign(VecAvx512 a, std::uint32_t mask) {
  return {_mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a.r),
                                               _mm512_set1_epi32(static_cast<int>(mask))))};
}
inline VecAvx512 maximum(VecAvx512 a, VecAvx512 b) {
  const __m512 larger = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.r, b.r, _CMP_GT_OQ), b.r, a.r);
  const __mmask16 unordered = _mm512_cmp_ps_mask(a.r, b.r, _CMP_UNORD_Q);
  const __m512 nan = _mm512_castsi512_ps(_mm512_set1_epi32(-1));
  return {_mm512_mask_blend_ps(unordered, larger, nan)};
}
inline VecAvx512 keep_min(VecAvx512 acc, VecAvx512 x) {
  return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(x.r, acc.r, _CMP_LT_OQ), acc.r, x.r)};
}
inline VecAvx512 keep_max(VecAvx512 acc, VecAvx512 x) {
  return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(x.r, acc.r, _CMP_GT_OQ), acc.r, x.r)};
}
inline std::uint32_t count_negative(VecAvx512 a) {
  const __mmask16 m = _mm512_cmp_ps_mask(a.r, _mm512_setzero_ps(), _CMP_LT_OQ);
  return static_cast<std::uint32_t>(__builtin_popcount(static_cast<unsigned>(m)));
}
inline std::uint32_t count_nan(VecAvx512 a) {
  const __mmask16 m = _mm512_cmp_ps_mask(a.r, a.r, _CMP_UNORD_Q);
  return static_cast<std::uint32_t>(__builtin_popcount(static_cast<unsigned>(m)));
}
inline float reduce_min(VecAvx512 a) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, a.r);
  float m = lanes[0];
  for (float x : lanes) m = x < m ? x : m;
  return m;
}
inline float reduce_max(VecAvx512 a) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, a.r);
  float m = lanes[0];
  for (float x : lanes) m = x > m ? x : m;
  return m;
}

}  // namespace adamcore::ADAMCORE_NS
