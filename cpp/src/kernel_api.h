// Internal interface between dispatch.cpp and the per-ISA kernel files.
// Plain data only: each ISA file compiles kernels.inl against its own Vec type.
#pragma once

#include <cstddef>
#include <cstdint>

#include "adamcore/adamcore.h"

namespace adamcore::detail {

enum class WdMode : int { none = 0, l2 = 1, decoupled = 2 };

// The element recipes the kernels are compiled for: the public Conventions, each peer's
// vector body and scalar tail apart (they contract different products). Non-default
// recipes are compiled for the all-float32 layout (kLayouts[0]) only.
// optax's Nesterov form is a recipe of its own (it needs next step's bias correction).
enum class Recipe : int {
  torch_body = 0,
  torch_tail = 1,
  deepspeed = 2,
  deepspeed_tail = 3,
  optax = 4,
  optax_nesterov = 5,
  keras = 6,
};
constexpr std::size_t kRecipeCount = 7;

// 16-bit storage: the bits of one bfloat16 / IEEE binary16 value. Distinct types so
// the kernels pick their loads and stores by overload.
struct Bf16 {
  std::uint16_t bits;
};
struct F16 {
  std::uint16_t bits;
};

// Per-step constants of one arithmetic (float for float32 and the 16-bit types,
// double for float64), computed on the host (docs/numerics.md gives each formula).
template <class T>
struct AdamCoeffs {
  T one_minus_beta1;        // W
  T one_minus_beta1_less1;  // W - 1, the lerp's coefficient when W >= 0.5
  T beta2;                  // B2
  T one_minus_beta2;        // C2
  T bc2_sqrt;               // D
  T eps;                    // E
  T neg_step_size;          // S
  T weight_decay;           // L (Adam: added to the gradient)
  T decay_factor;           // K = 1 - lr*wd (AdamW: multiplies the parameter)
  T grad_scale;             // AMP: grads are divided by it (when PassOptions::unscale)
  T clip_coef;              // grads are multiplied by it (when PassOptions::clip)
  // Γ diagnostics only
  T step_size;              // a_t
  T prev_step_size;         // a_{t-1}
  T prev_bc2_sqrt;          // D of step t-1
  // deepspeed recipe only (its other constants reuse the fields above, see adam_coeffs)
  T beta1;                  // B1
  // optax recipes only: reciprocals of the bias corrections, 1 / (1 - b^t)
  T bc1_recip;              // R1
  T bc1_recip_next;         // R1 of step t+1 (Nesterov)
  T bc2_recip;              // R2
  T eps_root;               // added under the square root
  // keras recipe only
  T lr;                     // AdamW's p - p*wd*lr
  T alpha;                  // lr * sqrt(1 - b2^t) / (1 - b1^t)
};

// Per-call choices that are not the optimizer's math (StepOptions), uniform over a call.
struct PassOptions {
  bool unscale;                 // divide grads by grad_scale and write them back
  bool clip;                    // multiply grads by clip_coef (not written back)
  bool stochastic;              // stochastic rounding of 16-bit params, state, copies
  std::uint64_t key;            // the stochastic stream's key: a hash of (seed, step)
};

struct AdamScalars {
  AdamCoeffs<float> f;          // used by layouts whose arithmetic is float32
  AdamCoeffs<double> d;         // used by the float64 layout
  std::uint32_t sign_flip;      // 0x80000000 with maximize, else 0 (a double's top word)
  bool gamma_defined;           // t > 1
  PassOptions pass;
};

template <class T>
struct AdagradCoeffs {
  T neg_clr;                    // N
  T weight_decay;               // L
  T eps;                        // E
  T grad_scale;
  T clip_coef;
  // Γ diagnostics only
  T clr;
  T prev_clr;
};

struct AdagradScalars {
  AdagradCoeffs<float> f;
  AdagradCoeffs<double> d;
  std::uint32_t sign_flip;
  bool gamma_defined;
  PassOptions pass;
};

// The stochastic-rounding hashes, shared by the host and every ISA. mix64 is
// SplitMix64's output for state z (the increment, then its finaliser); the 32-bit hash
// (two multiply-xorshift rounds) is applied per lane by kernels.inl with the same
// constants. Both are static: each translation unit keeps its own copy, so an
// unoptimised build emits no weak symbol that the linker could take from an AVX-512
// file for all callers.
static constexpr std::uint64_t mix64(std::uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
constexpr std::uint32_t kHashMul1 = 0x7FEB352Du;
constexpr std::uint32_t kHashMul2 = 0x846CA68Bu;
// Which buffer a 16-bit store writes: part of each element's random bits.
enum SrBuffer : std::uint32_t { sr_param = 0, sr_exp_avg, sr_exp_avg_sq, sr_max_exp_avg_sq,
                                sr_state_sum, sr_copy, sr_buffer_count };
// The key of buffer `which` of a tensor for elements [hi * 2^32, (hi + 1) * 2^32).
static inline std::uint32_t sr_buffer_key(std::uint64_t call_key, std::uint64_t stream,
                                          std::uint64_t hi, std::uint32_t which) {
  return static_cast<std::uint32_t>(
      mix64(call_key ^ mix64(stream ^ mix64(hi * sr_buffer_count + which))));
}

// The buffer layouts the kernels are compiled for: index i of this table is the
// kernels' layout index.
inline constexpr Layout kLayouts[] = {
    {DType::float32, DType::float32, DType::float32, DType::none},
    {DType::float64, DType::float64, DType::float64, DType::none},
    {DType::bfloat16, DType::bfloat16, DType::bfloat16, DType::none},
    {DType::float16, DType::float16, DType::float16, DType::none},
    // float32 master weights: 16-bit grads and/or a 16-bit copy of the updated
    // params (with 16-bit grads, a copy of the grads' dtype)
    {DType::float32, DType::float32, DType::float32, DType::bfloat16},
    {DType::float32, DType::float32, DType::float32, DType::float16},
    {DType::float32, DType::bfloat16, DType::float32, DType::none},
    {DType::float32, DType::float16, DType::float32, DType::none},
    {DType::float32, DType::bfloat16, DType::float32, DType::bfloat16},
    {DType::float32, DType::float16, DType::float32, DType::float16},
    // 16-bit params and grads with float32 state (DeepSpeed's CPU Adam layout)
    {DType::bfloat16, DType::bfloat16, DType::float32, DType::none},
    {DType::float16, DType::float16, DType::float32, DType::none},
    // bfloat16 state with float32 params: 8 fewer bytes per element for Adam
    {DType::float32, DType::float32, DType::bfloat16, DType::none},
    {DType::float32, DType::float32, DType::bfloat16, DType::bfloat16},
    {DType::float32, DType::bfloat16, DType::bfloat16, DType::none},
    {DType::float32, DType::bfloat16, DType::bfloat16, DType::bfloat16},
};
inline constexpr std::size_t kLayoutCount = sizeof(kLayouts) / sizeof(kLayouts[0]);

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

// SGD's and Lion's constants, per arithmetic (float32 for float32 and 16-bit, double).
template <class T>
struct SgdCoeffs {
  T weight_decay;
  T momentum;
  T one_minus_dampening;
  T neg_lr;
  T grad_scale;
  T clip_coef;
};
struct SgdScalars {
  SgdCoeffs<float> f;
  SgdCoeffs<double> d;
  std::uint32_t sign_flip;
  bool gamma_defined;           // always false: SGD has no Γ diagnostics
  PassOptions pass;
};

template <class T>
struct LionCoeffs {
  T beta1, one_minus_beta1;
  T beta2, one_minus_beta2;
  T lr, neg_lr;
  T decay_factor;               // 1 - lr*wd
  T grad_scale;
  T clip_coef;
};
struct LionScalars {
  LionCoeffs<float> f;
  LionCoeffs<double> d;
  std::uint32_t sign_flip;
  bool gamma_defined;           // always false
  PassOptions pass;
};

// SGD's and Lion's kernels exist for the first kSameDtypeLayouts rows of kLayouts only.
inline constexpr std::size_t kSameDtypeLayouts = 4;
enum class SgdMomentum : int { none = 0, first = 1, running = 2 };

using SgdRangeFn = void (*)(const SgdScalars&, const SgdBuffers&, std::size_t begin,
                            std::size_t end, DiagAccum* diag);
using LionRangeFn = void (*)(const LionScalars&, const LionBuffers&, std::size_t begin,
                             std::size_t end, DiagAccum* diag);

}  // namespace adamcore::detail

// Each ISA file defines these two in its namespace: they return the kernel
// specialised for the given layout (an index into kLayouts) and options (all
// branches resolved at compile time).
#define ADAMCORE_DECLARE_ISA(ns)                                                    \
  namespace adamcore::ns {                                                          \
  detail::AdamRangeFn adam_kernel(std::size_t layout, detail::WdMode wd,            \
                                  bool lerp_low, bool amsgrad, bool diag,           \
                                  detail::Recipe recipe);                           \
  detail::AdagradRangeFn adagrad_kernel(std::size_t layout, bool weight_decay,      \
                                        bool diag, detail::Recipe recipe);          \
  detail::SgdRangeFn sgd_kernel(std::size_t layout, bool weight_decay,              \
                                detail::SgdMomentum momentum, bool nesterov,        \
                                bool torch_tail);                                   \
  detail::LionRangeFn lion_kernel(std::size_t layout, LionConvention convention,    \
                                  bool decay);                                      \
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
