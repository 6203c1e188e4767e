// What this CPU and OS can run. Compiled without any ISA flags.
#pragma once

namespace adamcore::detail {

// AVX2, FMA and F16C, with the OS saving YMM state.
bool cpu_has_avx2_fma();
// AVX-512 F, VL, BW and DQ, with the OS saving ZMM and opmask state.
bool cpu_has_avx512();
// AMD Zen 3/4 (family 19h): their AVX-512 runs on 256-bit units, and the AVX2 kernels
// measured faster there. The choice changes speed only: every ISA gives the same bits.
bool cpu_prefers_avx2_over_avx512();
// Advanced SIMD: part of every aarch64 CPU.
bool cpu_has_neon();

}  // namespace adamcore::detail
