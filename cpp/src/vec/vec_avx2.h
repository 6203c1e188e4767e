// AVX2 + FMA + F16C: 8 floats (4 doubles). See vec_scalar.h for what each operation must mean.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "kernel_api.h"

namespace adamcore::ADAMCORE_NS {

// Eight uint32 lanes: the bit-level operations of stochastic rounding (kernels.inl).
struct VecAvx2U32 {
  static constexpr std::size_t kLanes = 8;
  __m256i r;
  static VecAvx2U32 set1(std::uint32_t v) { return {_mm256_set1_epi32(static_cast<int>(v))}; }
  static VecAvx2U32 iota(std::uint32_t start) {
    return {_mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(start)),
                             _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))};
  }
};
inline VecAvx2U32 add(VecAvx2U32 a, VecAvx2U32 b) { return {_mm256_add_epi32(a.r, b.r)}; }
inline VecAvx2U32 mul_lo(VecAvx2U32 a, VecAvx2U32 b) { return {_mm256_mullo_epi32(a.r, b.r)}; }
inline VecAvx2U32 bit_xor(VecAvx2U32 a, VecAvx2U32 b) { return {_mm256_xor_si256(a.r, b.r)}; }
inline VecAvx2U32 bit_and(VecAvx2U32 a, VecAvx2U32 b) { return {_mm256_and_si256(a.r, b.r)}; }
inline VecAvx2U32 bit_or(VecAvx2U32 a, VecAvx2U32 b) { return {_mm256_or_si256(a.r, b.r)}; }
template <int N>
inline VecAvx2U32 shift_right(VecAvx2U32 a) {
  return {_mm256_srli_epi32(a.r, N)};
}

struct VecAvx2 {
  static constexpr std::size_t kLanes = 8;
  static constexpr bool kStoresBf16Pairs = true;  // store_pair (vec_pair.h)
  using Bits = VecAvx2U32;
  __m256 r;
  static VecAvx2 load(const float* p) { return {_mm256_loadu_ps(p)}; }
  // bfloat16 -> float32: the 16 bits become the top half (exact).
  static VecAvx2 load(const detail::Bf16* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))};
  }
  static VecAvx2 load(const detail::F16* p) {  // F16C, exact
    return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
  }
  static VecAvx2 set1(float v) { return {_mm256_set1_ps(v)}; }
};

inline void store(float* p, VecAvx2 a) { _mm256_storeu_ps(p, a.r); }
// float32 -> bfloat16 in each lane's low half, round to nearest even by integer
// arithmetic; NaN stays a quiet NaN (vec_scalar.h's float_to_bf16, eight at a time).
inline __m256i bf16_nearest(__m256 a) {
  const __m256i b = _mm256_castps_si256(a);
  const __m256i high = _mm256_srli_epi32(b, 16);
  const __m256i odd = _mm256_and_si256(high, _mm256_set1_epi32(1));
  const __m256i rounded =
      _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7FFF)), odd), 16);
  const __m256i quiet_nan = _mm256_or_si256(high, _mm256_set1_epi32(0x40));
  const __m256i is_nan = _mm256_castps_si256(_mm256_cmp_ps(a, a, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(rounded, quiet_nan, is_nan);
}
// vec_scalar.h's float_to_bf16_stochastic, eight at a time, in each lane's low half.
inline __m256i bf16_stochastic(__m256 a, __m256i r) {
  const __m256i b = _mm256_castps_si256(a);
  const __m256i carried = _mm256_srli_epi32(_mm256_add_epi32(b, _mm256_srli_epi32(r, 16)), 16);
  const __m256i quiet_nan = _mm256_or_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(0x40));
  const __m256i is_nan = _mm256_castps_si256(_mm256_cmp_ps(a, a, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(carried, quiet_nan, is_nan);
}
// The low halves of eight lanes (each < 2^16, so the saturating pack is exact).
inline void store_low_halves(detail::Bf16* p, __m256i h) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm_packus_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1)));
}
// Sixteen: the pack interleaves the halves' 64-bit pieces (lo 0-3, hi 0-3, lo 4-7,
// hi 4-7); the permute puts them back in order for one 32-byte store.
inline void store_low_halves(detail::Bf16* p, __m256i lo, __m256i hi) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xD8));
}
inline void store(detail::Bf16* p, VecAvx2 a) { store_low_halves(p, bf16_nearest(a.r)); }
inline void store_stochastic(detail::Bf16* p, VecAvx2 a, VecAvx2U32 r) {
  store_low_halves(p, bf16_stochastic(a.r, r.r));
}
inline void store_pair(detail::Bf16* p, VecAvx2 lo, VecAvx2 hi) {
  store_low_halves(p, bf16_nearest(lo.r), bf16_nearest(hi.r));
}
inline void store_stochastic_pair(detail::Bf16* p, VecAvx2 lo, VecAvx2 hi, VecAvx2U32 r_lo,
                                  VecAvx2U32 r_hi) {
  store_low_halves(p, bf16_stochastic(lo.r, r_lo.r), bf16_stochastic(hi.r, r_hi.r));
}
inline void store(detail::F16* p, VecAvx2 a) {  // F16C, round to nearest even
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm256_cvtps_ph(a.r, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
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
inline VecAvx2U32 as_bits(VecAvx2 a) { return {_mm256_castps_si256(a.r)}; }
inline VecAvx2 from_bits(VecAvx2U32 b) { return {_mm256_castsi256_ps(b.r)}; }
inline VecAvx2 to_float(VecAvx2U32 b) { return {_mm256_cvtepi32_ps(b.r)}; }  // b < 2^24
inline VecAvx2 trunc(VecAvx2 a) {
  return {_mm256_round_ps(a.r, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC)};
}
inline VecAvx2U32 nan_mask(VecAvx2 a) {
  return {_mm256_castps_si256(_mm256_cmp_ps(a.r, a.r, _CMP_UNORD_Q))};
}
inline VecAvx2U32 less_mask(VecAvx2 a, VecAvx2 b) {
  return {_mm256_castps_si256(_mm256_cmp_ps(a.r, b.r, _CMP_LT_OQ))};
}
inline VecAvx2 select(VecAvx2U32 mask, VecAvx2 if_set, VecAvx2 if_clear) {
  return {_mm256_blendv_ps(if_clear.r, if_set.r, _mm256_castsi256_ps(mask.r))};
}

// Four doubles: the float64 layout.
struct VecAvx2F64 {
  static constexpr std::size_t kLanes = 4;
  __m256d r;
  static VecAvx2F64 load(const double* p) { return {_mm256_loadu_pd(p)}; }
  static VecAvx2F64 set1(double v) { return {_mm256_set1_pd(v)}; }
};

inline void store(double* p, VecAvx2F64 a) { _mm256_storeu_pd(p, a.r); }
inline VecAvx2F64 add(VecAvx2F64 a, VecAvx2F64 b) { return {_mm256_add_pd(a.r, b.r)}; }
inline VecAvx2F64 sub(VecAvx2F64 a, VecAvx2F64 b) { return {_mm256_sub_pd(a.r, b.r)}; }
inline VecAvx2F64 mul(VecAvx2F64 a, VecAvx2F64 b) { return {_mm256_mul_pd(a.r, b.r)}; }
inline VecAvx2F64 div(VecAvx2F64 a, VecAvx2F64 b) { return {_mm256_div_pd(a.r, b.r)}; }
inline VecAvx2F64 sqrt(VecAvx2F64 a) { return {_mm256_sqrt_pd(a.r)}; }
inline VecAvx2F64 fma(VecAvx2F64 a, VecAvx2F64 b, VecAvx2F64 c) {
  return {_mm256_fmadd_pd(a.r, b.r, c.r)};
}
inline VecAvx2F64 flip_sign(VecAvx2F64 a, std::uint32_t mask) {
  const __m256i m = _mm256_set1_epi64x(static_cast<long long>(std::uint64_t{mask} << 32));
  return {_mm256_xor_pd(a.r, _mm256_castsi256_pd(m))};
}
inline VecAvx2F64 maximum(VecAvx2F64 a, VecAvx2F64 b) {
  const __m256d larger = _mm256_blendv_pd(b.r, a.r, _mm256_cmp_pd(a.r, b.r, _CMP_GT_OQ));
  return {_mm256_or_pd(larger, _mm256_cmp_pd(a.r, b.r, _CMP_UNORD_Q))};
}
inline VecAvx2F64 keep_min(VecAvx2F64 acc, VecAvx2F64 x) {
  return {_mm256_blendv_pd(acc.r, x.r, _mm256_cmp_pd(x.r, acc.r, _CMP_LT_OQ))};
}
inline VecAvx2F64 keep_max(VecAvx2F64 acc, VecAvx2F64 x) {
  return {_mm256_blendv_pd(acc.r, x.r, _mm256_cmp_pd(x.r, acc.r, _CMP_GT_OQ))};
}
inline std::uint32_t count_negative(VecAvx2F64 a) {
  const int bits = _mm256_movemask_pd(_mm256_cmp_pd(a.r, _mm256_setzero_pd(), _CMP_LT_OQ));
  return static_cast<std::uint32_t>(__builtin_popcount(static_cast<unsigned>(bits)));
}
inline std::uint32_t count_nan(VecAvx2F64 a) {
  const int bits = _mm256_movemask_pd(_mm256_cmp_pd(a.r, a.r, _CMP_UNORD_Q));
  return static_cast<std::uint32_t>(__builtin_popcount(static_cast<unsigned>(bits)));
}
inline double reduce_min(VecAvx2F64 a) {
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, a.r);
  double m = lanes[0];
  for (double x : lanes) m = x < m ? x : m;
  return m;
}
inline double reduce_max(VecAvx2F64 a) {
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, a.r);
  double m = lanes[0];
  for (double x : lanes) m = x > m ? x : m;
  return m;
}

// ---- The gradient norm (norm.inl): four elements widened to double (exact).
inline VecAvx2F64 widen_load(VecAvx2F64, const float* p) { return {_mm256_cvtps_pd(_mm_loadu_ps(p))}; }
inline VecAvx2F64 widen_load(VecAvx2F64, const double* p) { return {_mm256_loadu_pd(p)}; }
inline VecAvx2F64 widen_load(VecAvx2F64, const detail::Bf16* p) {
  const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return {_mm256_cvtps_pd(_mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(h), 16)))};
}
inline VecAvx2F64 widen_load(VecAvx2F64, const detail::F16* p) {
  return {_mm256_cvtps_pd(_mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))))};
}
inline VecAvx2F64 absolute(VecAvx2F64 a) { return {_mm256_andnot_pd(_mm256_set1_pd(-0.0), a.r)}; }

}  // namespace adamcore::ADAMCORE_NS
