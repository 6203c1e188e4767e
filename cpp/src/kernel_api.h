// Internal interface between dispatch.cpp and the per-ISA kernel files.
// Plain data only: each ISA file compiles kernels.inl against its own Vec type.
#pragma once

#include <cstddef>
#include <cstdint>

#include "adamcore/adamcore.h"

namespace adamcore::detail {

enum class WdMode : int { none = 0, l2 = 1, decoupled = 2 };

// Per-step constants, computed in double on the host and rounded to float32 once
// (docs/numerics.md gives each one's formula).
struct AdamScalars {
  float one_minus_beta1;        // W
  float one_minus_beta1_less1;  // fl(W - 1), the lerp's coefficient when W >= 0.5
  float beta2;                  // B2
  float one_minus_beta2;        // C2
  float bc2_sqrt;               // D
  float eps;                    // E
  float neg_step_size;          // S
  float weight_decay;           // L (Adam: added to the gradient)
  float decay_factor;           // K = fl(1 - lr*wd) (AdamW: multiplies the parameter)
  std::uint32_t sign_flip;      // 0x80000000 with maximize, else 0
  // Γ diagnostics only
  float step_size;              // a_t
  float prev_step_size;         // a_{t-1}
  float prev_bc2_sqrt;          // D of step t-1
  bool gamma_defined;           // t > 1
};

struct AdagradScalars {
  float neg_clr;                // N
  float weight_decay;           // L
  float eps;                    // E
  std::uint32_t sign_flip;
  // Γ diagnostics only
  float clr;
  float prev_clr;
  bool gamma_defined;
};

// Per-thread Γ accumulator, set by diag_init. Every reduction is order-independent.
// (No member initialisers: they would give it a constructor that an unoptimised build
// emits as a weak symbol in every ISA's file.)
struct DiagAccum {
  std::int64_t negative;
  std::int64_t undefined;
  float gamma_min;
  float lr_min;
  float lr_max;
};
void diag_init(DiagAccum* acc);
void diag_merge(DiagAccum* into, const DiagAccum& from);

using AdamRangeFn = void (*)(const AdamScalars&, const AdamBuffers&, std::size_t begin,
                             std::size_t end, DiagAccum* diag);
using AdagradRangeFn = void (*)(const AdagradScalars&, const AdagradBuffers&,
                                std::size_t begin, std::size_t end, DiagAccum* diag);

}  // namespace adamcore::detail

// Each ISA file defines these two in its namespace: they return the kernel
// specialised for the given options (all branches resolved at compile time).
#define ADAMCORE_DECLARE_ISA(ns)                                                    \
  namespace adamcore::ns {                                                          \
  detail::AdamRangeFn adam_kernel(detail::WdMode wd, bool lerp_low, bool amsgrad,   \
                                  bool diag);                                       \
  detail::AdagradRangeFn adagrad_kernel(bool weight_decay, bool diag);              \
  }

ADAMCORE_DECLARE_ISA(scalar)
#if defined(ADAMCORE_HAVE_AVX2)
ADAMCORE_DECLARE_ISA(avx2)
#endif
#if defined(ADAMCORE_HAVE_AVX512)
ADAMCORE_DECLARE_ISA(avx512)
#endif
#if defined(ADAMCORE_HAVE_NEON)
ADAMCORE_DECLARE_ISA(neon)
#endif
