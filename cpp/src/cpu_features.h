// What this CPU and OS can run. Compiled without any ISA flags.
#pragma once

namespace adamcore::detail {

// AVX2 and FMA, with the OS saving YMM state.
bool cpu_has_avx2_fma();
// AVX-512 F, VL, BW and DQ, with the OS saving ZMM and opmask state.
bool cpu_has_avx512();
// Advanced SIMD: part of every aarch64 CPU.
bool cpu_has_neon();

}  // namespace adamcore::detail
