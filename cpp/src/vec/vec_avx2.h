// AVX2 + FMA: 8 lanes. See vec_scalar.h for what each operation must mean.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

namespace adamcore::ADAMCORE_NS {

struct VecAvx2 {
  static constexpr std::size_t kLanes = 8;
  __m256 r;
  static VecAvx2 load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static VecAvx2 set1(float v) { return {_mm256_set1_ps(v)}; }
};

inline void store(float* p, VecAvx2 a) { _mm256_storeu_ps(p, a.r); }
inline VecAvx2 add(VecAvx2 a, VecAvx2 b) { return {_mm256_add_ps(a.r, b.r)}; }
inline VecAvx2 sub(VecAvx2 a, VecAvx2 b) { return {_mm256_sub_ps(a.r, b.r)}; }
inline VecAvx2 mul(VecAvx2 a, VecAvx2 b) { return {_mm256_mul_ps(a.r, b.r)}; }
inline VecAvx2 div(VecAvx2 a, VecAvx2 b) { return {_mm256_div_ps(a.r, b.r)}; }
inline VecAvx2 sqrt(VecAvx2 a) { return {_mm256_sqrt_ps(a.r)}; }
inline VecAvx2 fma(VecAvx2 a, VecAvx2 b, VecAvx2 c) { return {_mm256_fmadd_ps(a.r, b.r, c.r)}; }
inline VecAvx2 flip_sign(VecAvx2 a, std::uint32_t mask) {
  return {_mm256_xor_ps(a.r, _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(mask))))};
}
inline VecAvx2 maximum(VecAvx2 a, VecAvx2 b) {
  const __m256 larger = _mm256_blendv_ps(b.r, a.r, _mm256_cmp_ps(a.r, b.r, _CMP_GT_OQ));
  const __m256 unordered = _mm256_cmp_ps(a.r, b.r, _CMP_UNORD_Q);  // all ones = NaN
  return {_mm256_or_ps(larger, unordered)};
}
inline VecAvx2 keep_min(VecAvx2 acc, VecAvx2 x) {
  return {_mm256_blendv_ps(acc.r, x.r, _mm256_cmp_ps(x.r, acc.r, _CMP_LT_OQ))};
}
inline VecAvx2 keep_max(VecAvx2 acc, VecAvx2 x) {
  return {_mm256_blendv_ps(acc.r, x.r, _mm256_cmp_ps(x.r, acc.r, _CMP_GT_OQ))};
}
inline std::uint32_t count_negative(VecAvx2 a) {
  const int bits = _mm256_movemask_ps(_mm256_cmp_ps(a.r, _mm256_setzero_ps(), _CMP_LT_OQ));
  return static_cast<std::uint32_t>(__builtin_popcount(static_cast<unsigned>(bits)));
}
inline std::uint32_t count_nan(VecAvx2 a) {
  const int bits = _mm256_movemask_ps(_mm256_cmp_ps(a.r, a.r, _CMP_UNORD_Q));
  return static_cast<std::uint32_t>(__builtin_popcount(static_cast<unsigned>(bits)));
}
inline float reduce_min(VecAvx2 a) {
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, a.r);
  float m = lanes[0];
  for (float x : lanes) m = x < m ? x : m;
  return m;
}
inline float reduce_max(VecAvx2 a) {
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, a.r);
  float m = lanes[0];
  for (float x : lanes) m = x > m ? x : m;
  return m;
}

}  // namespace adamcore::ADAMCORE_NS
