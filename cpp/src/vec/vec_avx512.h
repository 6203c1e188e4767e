// AVX-512 (F, VL, BW, DQ): 16 floats (8 doubles). See vec_scalar.h for what each operation must mean.
#pragma once

#if defined(ADAMCORE_EMULATE_AVX512)
#include "avx512_emulation.h"  // test trees on CPUs without AVX-512 (CMakeLists.txt)
#else
#include <immintrin.h>
#endif

#include <cstddef>
#include <cstdint>

#include "kernel_api.h"

namespace adamcore::ADAMCORE_NS {

// Sixteen uint32 lanes: the bit-level operations of stochastic rounding (kernels.inl).
struct VecAvx512U32 {
  static constexpr std::size_t kLanes = 16;
  __m512i r;
  static VecAvx512U32 set1(std::uint32_t v) { return {_mm512_set1_epi32(static_cast<int>(v))}; }
  static VecAvx512U32 iota(std::uint32_t start) {
    return {_mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(start)),
                             _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,
                                               14, 15))};
  }
};
inline VecAvx512U32 add(VecAvx512U32 a, VecAvx512U32 b) { return {_mm512_add_epi32(a.r, b.r)}; }
inline VecAvx512U32 mul_lo(VecAvx512U32 a, VecAvx512U32 b) {
  return {_mm512_mullo_epi32(a.r, b.r)};
}
inline VecAvx512U32 bit_xor(VecAvx512U32 a, VecAvx512U32 b) {
  return {_mm512_xor_si512(a.r, b.r)};
}
inline VecAvx512U32 bit_and(VecAvx512U32 a, VecAvx512U32 b) {
  return {_mm512_and_si512(a.r, b.r)};
}
inline VecAvx512U32 bit_or(VecAvx512U32 a, VecAvx512U32 b) { return {_mm512_or_si512(a.r, b.r)}; }
template <int N>
inline VecAvx512U32 shift_right(VecAvx512U32 a) {
  return {_mm512_srli_epi32(a.r, N)};
}

struct VecAvx512 {
  static constexpr std::size_t kLanes = 16;
  static constexpr bool kStoresBf16Pairs = true;  // store_pair (vec_pair.h)
  using Bits = VecAvx512U32;
  __m512 r;
  static VecAvx512 load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static VecAvx512 load(const detail::Bf16* p) {  // exact: the bits become the top half
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))};
  }
  static VecAvx512 load(const detail::F16* p) {  // exact
    return {_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))};
  }
  static VecAvx512 set1(float v) { return {_mm512_set1_ps(v)}; }
};

inline void store(float* p, VecAvx512 a) { _mm512_storeu_ps(p, a.r); }
// Round to nearest even by integer arithmetic, NaN kept quiet: vec_scalar.h's
// float_to_bf16, sixteen at a time, in each lane's low half.
inline __m512i bf16_nearest(__m512 a) {
  const __m512i b = _mm512_castps_si512(a);
  const __m512i high = _mm512_srli_epi32(b, 16);
  const __m512i odd = _mm512_and_si512(high, _mm512_set1_epi32(1));
  const __m512i rounded =
      _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7FFF)), odd), 16);
  const __m512i quiet_nan = _mm512_or_si512(high, _mm512_set1_epi32(0x40));
  const __mmask16 is_nan = _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
  return _mm512_mask_blend_epi32(is_nan, rounded, quiet_nan);
}
// vec_scalar.h's float_to_bf16_stochastic, sixteen at a time, in each lane's low half.
inline __m512i bf16_stochastic(__m512 a, __m512i r) {
  const __m512i b = _mm512_castps_si512(a);
  const __m512i carried = _mm512_srli_epi32(_mm512_add_epi32(b, _mm512_srli_epi32(r, 16)), 16);
  const __m512i quiet_nan = _mm512_or_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(0x40));
  const __mmask16 is_nan = _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
  return _mm512_mask_blend_epi32(is_nan, carried, quiet_nan);
}
// The low halves of sixteen lanes (vpmovdw truncates; each is < 2^16).
inline void store_low_halves(detail::Bf16* p, __m512i h) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(h));
}
// Thirty-two: the saturating pack (exact, each < 2^16) interleaves the halves' 64-bit
// pieces per 128-bit lane (lo 0-3, hi 0-3, lo 4-7, hi 4-7, ...); the permute puts
// them back in order (even pieces from lo, odd from hi) for one 64-byte store.
inline void store_low_halves(detail::Bf16* p, __m512i lo, __m512i hi) {
  const __m512i order = _mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7);
  _mm512_storeu_si512(p, _mm512_permutexvar_epi64(order, _mm512_packus_epi32(lo, hi)));
}
inline void store(detail::Bf16* p, VecAvx512 a) { store_low_halves(p, bf16_nearest(a.r)); }
inline void store_stochastic(detail::Bf16* p, VecAvx512 a, VecAvx512U32 r) {
  store_low_halves(p, bf16_stochastic(a.r, r.r));
}
inline void store_pair(detail::Bf16* p, VecAvx512 lo, VecAvx512 hi) {
  store_low_halves(p, bf16_nearest(lo.r), bf16_nearest(hi.r));
}
inline void store_stochastic_pair(detail::Bf16* p, VecAvx512 lo, VecAvx512 hi,
                                  VecAvx512U32 r_lo, VecAvx512U32 r_hi) {
  store_low_halves(p, bf16_stochastic(lo.r, r_lo.r), bf16_stochastic(hi.r, r_hi.r));
}
inline void store(detail::F16* p, VecAvx512 a) {  // round to nearest even
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      _mm512_cvtps_ph(a.r, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
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
inline VecAvx512U32 as_bits(VecAvx512 a) { return {_mm512_castps_si512(a.r)}; }
inline VecAvx512 from_bits(VecAvx512U32 b) { return {_mm512_castsi512_ps(b.r)}; }
inline VecAvx512 to_float(VecAvx512U32 b) { return {_mm512_cvtepi32_ps(b.r)}; }  // b < 2^24
inline VecAvx512 trunc(VecAvx512 a) {
  return {_mm512_roundscale_ps(a.r, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC)};
}
inline VecAvx512U32 nan_mask(VecAvx512 a) {
  return {_mm512_movm_epi32(_mm512_cmp_ps_mask(a.r, a.r, _CMP_UNORD_Q))};
}
inline VecAvx512U32 less_mask(VecAvx512 a, VecAvx512 b) {
  return {_mm512_movm_epi32(_mm512_cmp_ps_mask(a.r, b.r, _CMP_LT_OQ))};
}
inline VecAvx512 select(VecAvx512U32 mask, VecAvx512 if_set, VecAvx512 if_clear) {
  return {_mm512_mask_blend_ps(_mm512_test_epi32_mask(mask.r, mask.r), if_clear.r, if_set.r)};
}

// Eight doubles: the float64 layout.
struct VecAvx512F64 {
  static constexpr std::size_t kLanes = 8;
  __m512d r;
  static VecAvx512F64 load(const double* p) { return {_mm512_loadu_pd(p)}; }
  static VecAvx512F64 set1(double v) { return {_mm512_set1_pd(v)}; }
};

inline void store(double* p, VecAvx512F64 a) { _mm512_storeu_pd(p, a.r); }
inline VecAvx512F64 add(VecAvx512F64 a, VecAvx512F64 b) { return {_mm512_add_pd(a.r, b.r)}; }
inline VecAvx512F64 sub(VecAvx512F64 a, VecAvx512F64 b) { return {_mm512_sub_pd(a.r, b.r)}; }
inline VecAvx512F64 mul(VecAvx512F64 a, VecAvx512F64 b) { return {_mm512_mul_pd(a.r, b.r)}; }
inline VecAvx512F64 div(VecAvx512F64 a, VecAvx512F64 b) { return {_mm512_div_pd(a.r, b.r)}; }
inline VecAvx512F64 sqrt(VecAvx512F64 a) { return {_mm512_sqrt_pd(a.r)}; }
inline VecAvx512F64 fma(VecAvx512F64 a, VecAvx512F64 b, VecAvx512F64 c) {
  return {_mm512_fmadd_pd(a.r, b.r, c.r)};
}
inline VecAvx512F64 flip_sign(VecAvx512F64 a, std::uint32_t mask) {
  const __m512i m = _mm512_set1_epi64(static_cast<long long>(std::uint64_t{mask} << 32));
  return {_mm512_castsi512_pd(_mm512_xor_si512(_mm512_castpd_si512(a.r), m))};
}
inline VecAvx512F64 maximum(VecAvx512F64 a, VecAvx512F64 b) {
  const __m512d larger = _mm512_mask_blend_pd(_mm512_cmp_pd_mask(a.r, b.r, _CMP_GT_OQ), b.r, a.r);
  const __mmask8 unordered = _mm512_cmp_pd_mask(a.r, b.r, _CMP_UNORD_Q);
  const __m512d nan = _mm512_castsi512_pd(_mm512_set1_epi64(-1));
  return {_mm512_mask_blend_pd(unordered, larger, nan)};
}
inline VecAvx512F64 keep_min(VecAvx512F64 acc, VecAvx512F64 x) {
  return {_mm512_mask_blend_pd(_mm512_cmp_pd_mask(x.r, acc.r, _CMP_LT_OQ), acc.r, x.r)};
}
inline VecAvx512F64 keep_max(VecAvx512F64 acc, VecAvx512F64 x) {
  return {_mm512_mask_blend_pd(_mm512_cmp_pd_mask(x.r, acc.r, _CMP_GT_OQ), acc.r, x.r)};
}
inline std::uint32_t count_negative(VecAvx512F64 a) {
  const __mmask8 m = _mm512_cmp_pd_mask(a.r, _mm512_setzero_pd(), _CMP_LT_OQ);
  return static_cast<std::uint32_t>(__builtin_popcount(static_cast<unsigned>(m)));
}
inline std::uint32_t count_nan(VecAvx512F64 a) {
  const __mmask8 m = _mm512_cmp_pd_mask(a.r, a.r, _CMP_UNORD_Q);
  return static_cast<std::uint32_t>(__builtin_popcount(static_cast<unsigned>(m)));
}
inline double reduce_min(VecAvx512F64 a) {
  alignas(64) double lanes[8];
  _mm512_store_pd(lanes, a.r);
  double m = lanes[0];
  for (double x : lanes) m = x < m ? x : m;
  return m;
}
inline double reduce_max(VecAvx512F64 a) {
  alignas(64) double lanes[8];
  _mm512_store_pd(lanes, a.r);
  double m = lanes[0];
  for (double x : lanes) m = x > m ? x : m;
  return m;
}

// ---- The gradient norm (norm.inl): eight elements widened to double (exact).
inline VecAvx512F64 widen_load(VecAvx512F64, const float* p) {
  return {_mm512_cvtps_pd(_mm256_loadu_ps(p))};
}
inline VecAvx512F64 widen_load(VecAvx512F64, const double* p) { return {_mm512_loadu_pd(p)}; }
inline VecAvx512F64 widen_load(VecAvx512F64, const detail::Bf16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return {_mm512_cvtps_pd(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)))};
}
inline VecAvx512F64 widen_load(VecAvx512F64, const detail::F16* p) {
  return {_mm512_cvtps_pd(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))))};
}
inline VecAvx512F64 absolute(VecAvx512F64 a) {
  const __m512i magnitude = _mm512_set1_epi64(0x7FFFFFFFFFFFFFFFLL);
  return {_mm512_castsi512_pd(_mm512_and_si512(_mm512_castpd_si512(a.r), magnitude))};
}

}  // namespace adamcore::ADAMCORE_NS
