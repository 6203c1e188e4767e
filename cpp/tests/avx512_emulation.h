// AVX-512 in software, for test trees on CPUs without it (CMake option
// ADAMCORE_EMULATE_AVX512): vec_avx512.h includes this instead of <immintrin.h>, so the
// avx512 kernels run lane for lane on an AVX2 machine and the cross-ISA tests compare
// their bits with the scalar ISA's. SIMDe supplies the _mm512 operations (as AVX2 pairs
// where it can); the six conversions SIMDe 0.7.4 lacks, and vrndscaleps, which it gets
// wrong (with imm 0x0B, truncation to an integer, it kept fraction bits: 339.90625 became
// 339.875), are written below lane by lane, each with the scalar operation that rounds as
// the instruction does. Never part of what ships: the real avx512 TU is compiled with the
// -mavx512* flags and <immintrin.h>.
#pragma once

#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>

#include <immintrin.h>

#include <cmath>
#include <cstdint>

namespace adamcore_avx512_emulation {

// vpmovdw: each int32 lane truncated to its low 16 bits.
inline simde__m256i cvtepi32_epi16(simde__m512i a) {
  const simde__m512i_private in = simde__m512i_to_private(a);
  simde__m256i_private out;
  for (int i = 0; i < 16; ++i) out.u16[i] = static_cast<std::uint16_t>(in.u32[i]);
  return simde__m256i_from_private(out);
}
// vcvtdq2ps: rounded in the current mode, as a scalar int-to-float conversion is.
inline simde__m512 cvtepi32_ps(simde__m512i a) {
  const simde__m512i_private in = simde__m512i_to_private(a);
  simde__m512_private out;
  for (int i = 0; i < 16; ++i) out.f32[i] = static_cast<float>(in.i32[i]);
  return simde__m512_from_private(out);
}
// vpmovzxwd: zero extension.
inline simde__m512i cvtepu16_epi32(simde__m256i a) {
  const simde__m256i_private in = simde__m256i_to_private(a);
  simde__m512i_private out;
  for (int i = 0; i < 16; ++i) out.u32[i] = in.u16[i];
  return simde__m512i_from_private(out);
}
// vcvtph2ps, one lane at a time through F16C (exact).
inline simde__m512 cvtph_ps(simde__m256i a) {
  const simde__m256i_private in = simde__m256i_to_private(a);
  simde__m512_private out;
  for (int i = 0; i < 16; ++i) out.f32[i] = _cvtsh_ss(in.u16[i]);
  return simde__m512_from_private(out);
}
// vcvtps2ph with the instruction's rounding immediate, one lane at a time through F16C.
template <int kRounding>
simde__m256i cvtps_ph(simde__m512 a) {
  const simde__m512_private in = simde__m512_to_private(a);
  simde__m256i_private out;
  for (int i = 0; i < 16; ++i) out.u16[i] = _cvtss_sh(in.f32[i], kRounding);
  return simde__m256i_from_private(out);
}
// vrndscaleps with imm8 = _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC (scale 0: truncate to an
// integer), the only form vec_avx512.h uses.
template <int kImm>
simde__m512 roundscale_ps(simde__m512 a) {
  static_assert(kImm == (_MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC), "only truncation is emulated");
  const simde__m512_private in = simde__m512_to_private(a);
  simde__m512_private out;
  for (int i = 0; i < 16; ++i) out.f32[i] = std::trunc(in.f32[i]);
  return simde__m512_from_private(out);
}
// vcvtps2pd: exact.
inline simde__m512d cvtps_pd(simde__m256 a) {
  const simde__m256_private in = simde__m256_to_private(a);
  simde__m512d_private out;
  for (int i = 0; i < 8; ++i) out.f64[i] = static_cast<double>(in.f32[i]);
  return simde__m512d_from_private(out);
}

}  // namespace adamcore_avx512_emulation

#define _mm512_cvtepi32_epi16(a) ::adamcore_avx512_emulation::cvtepi32_epi16(a)
#define _mm512_cvtepi32_ps(a) ::adamcore_avx512_emulation::cvtepi32_ps(a)
#define _mm512_cvtepu16_epi32(a) ::adamcore_avx512_emulation::cvtepu16_epi32(a)
#define _mm512_cvtph_ps(a) ::adamcore_avx512_emulation::cvtph_ps(a)
#define _mm512_cvtps_ph(a, rounding) ::adamcore_avx512_emulation::cvtps_ph<(rounding)>(a)
#define _mm512_cvtps_pd(a) ::adamcore_avx512_emulation::cvtps_pd(a)
#undef _mm512_roundscale_ps
#define _mm512_roundscale_ps(a, imm) ::adamcore_avx512_emulation::roundscale_ps<(imm)>(a)
