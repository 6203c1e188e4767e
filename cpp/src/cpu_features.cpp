#include "cpu_features.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <cstdint>
#endif

namespace adamcore::detail {

#if defined(__x86_64__) || defined(__i386__)
namespace {

std::uint64_t read_xcr0() {
  std::uint32_t eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<std::uint64_t>(edx) << 32) | eax;
}

struct CpuidBits {
  bool osxsave = false, avx = false, fma = false, f16c = false, avx2 = false;
  bool avx512f = false, avx512vl = false, avx512bw = false, avx512dq = false;
  std::uint64_t xcr0 = 0;
};

CpuidBits read_cpuid() {
  CpuidBits bits;
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return bits;
  bits.fma = (ecx >> 12) & 1;
  bits.osxsave = (ecx >> 27) & 1;
  bits.avx = (ecx >> 28) & 1;
  bits.f16c = (ecx >> 29) & 1;
  if (bits.osxsave) bits.xcr0 = read_xcr0();
  if (__get_cpuid_max(0, nullptr) >= 7) {
    __cpuid_count(7, 0, eax, ebx, ecx, edx);
    bits.avx2 = (ebx >> 5) & 1;
    bits.avx512f = (ebx >> 16) & 1;
    bits.avx512dq = (ebx >> 17) & 1;
    bits.avx512bw = (ebx >> 30) & 1;
    bits.avx512vl = (ebx >> 31) & 1;
  }
  return bits;
}

}  // namespace

bool cpu_has_avx2_fma() {
  const CpuidBits b = read_cpuid();
  const bool os_ymm = (b.xcr0 & 0x6) == 0x6;  // XMM and YMM state
  // F16C: the avx2 kernels convert float16 buffers with it (every AVX2 CPU has it).
  return b.osxsave && os_ymm && b.avx && b.fma && b.f16c && b.avx2;
}

bool cpu_has_avx512() {
  const CpuidBits b = read_cpuid();
  const bool os_zmm = (b.xcr0 & 0xE6) == 0xE6;  // XMM, YMM, opmask, ZMM_Hi256, Hi16_ZMM
  return cpu_has_avx2_fma() && os_zmm && b.avx512f && b.avx512vl && b.avx512bw && b.avx512dq;
}

bool cpu_prefers_avx2_over_avx512() {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return false;
  const bool amd = ebx == 0x68747541u && edx == 0x69746e65u && ecx == 0x444d4163u;  // AuthenticAMD
  if (!amd || !__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  unsigned family = (eax >> 8) & 0xF;
  if (family == 0xF) family += (eax >> 20) & 0xFF;
  return family == 0x19;
}

bool cpu_has_neon() { return false; }

#else

bool cpu_prefers_avx2_over_avx512() { return false; }

bool cpu_has_avx2_fma() { return false; }
bool cpu_has_avx512() { return false; }
#if defined(__aarch64__)
bool cpu_has_neon() { return true; }
#else
bool cpu_has_neon() { return false; }
#endif

#endif

}  // namespace adamcore::detail
