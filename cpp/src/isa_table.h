// Every ISA of adamcore in one table: its name, whether this build has it and this CPU
// can run it, and its kernel entry points. Adding an ISA is a row here (plus its vector
// header and translation unit, kernels_<isa>.cpp).
#pragma once

#include "adamcore/adamcore.h"
#include "cpu_features.h"
#include "kernel_api.h"
#include "norm_api.h"

namespace adamcore::detail {

struct IsaRow {
  Isa isa;
  const char* name;
  bool (*cpu_can_run)();  // null: not compiled into this build
  AdamRangeFn (*adam)(std::size_t layout, WdMode wd, bool lerp_low, bool amsgrad, bool diag,
                      Recipe recipe);
  AdagradRangeFn (*adagrad)(std::size_t layout, bool weight_decay, bool diag, Recipe recipe);
  NormChunksFn (*norm_chunks)(DType dtype, NormKind kind);
  ScaleFn (*scale)(DType dtype);
};

inline bool always() { return true; }

// Indexed by the Isa's value.
#define ADAMCORE_ISA_ROW(ns, can_run) \
  { Isa::ns, #ns, can_run, &ns::adam_kernel, &ns::adagrad_kernel, &ns::norm_chunks_kernel, \
    &ns::scale_kernel }
#define ADAMCORE_ISA_ABSENT(ns) \
  { Isa::ns, #ns, nullptr, nullptr, nullptr, nullptr, nullptr }

inline constexpr IsaRow kIsaRows[kIsaCount] = {
    ADAMCORE_ISA_ROW(scalar, &always),
#if defined(ADAMCORE_HAVE_AVX2)
    ADAMCORE_ISA_ROW(avx2, &cpu_has_avx2_fma),
#else
    ADAMCORE_ISA_ABSENT(avx2),
#endif
#if defined(ADAMCORE_HAVE_AVX512) && defined(ADAMCORE_EMULATE_AVX512)
    ADAMCORE_ISA_ROW(avx512, &cpu_has_avx2_fma),  // software AVX-512 (test trees only)
#elif defined(ADAMCORE_HAVE_AVX512)
    ADAMCORE_ISA_ROW(avx512, &cpu_has_avx512),
#else
    ADAMCORE_ISA_ABSENT(avx512),
#endif
#if defined(ADAMCORE_HAVE_NEON)
    ADAMCORE_ISA_ROW(neon, &cpu_has_neon),
#else
    ADAMCORE_ISA_ABSENT(neon),
#endif
};

#undef ADAMCORE_ISA_ROW
#undef ADAMCORE_ISA_ABSENT

constexpr bool rows_in_isa_order() {
  for (int i = 0; i < kIsaCount; ++i) {
    if (static_cast<int>(kIsaRows[i].isa) != i) return false;
  }
  return true;
}
static_assert(rows_in_isa_order(), "kIsaRows must be indexed by the Isa's value");

// The row of `isa`, which must be compiled in (callers check isa_compiled).
inline const IsaRow& isa_row(Isa isa) { return kIsaRows[static_cast<int>(isa)]; }

// SGD's and Lion's entry points per ISA, indexed like kIsaRows (a separate table so the
// rows above stay as they are; an absent ISA has null pointers).
struct ElementwiseRow {
  SgdRangeFn (*sgd)(std::size_t layout, bool weight_decay, SgdMomentum momentum,
                    bool nesterov, bool torch_tail);
  LionRangeFn (*lion)(std::size_t layout, LionConvention convention, bool decay);
};
#define ADAMCORE_ELEMENTWISE_ROW(ns) {&ns::sgd_kernel, &ns::lion_kernel}
inline constexpr ElementwiseRow kElementwiseRows[kIsaCount] = {
    ADAMCORE_ELEMENTWISE_ROW(scalar),
#if defined(ADAMCORE_HAVE_AVX2)
    ADAMCORE_ELEMENTWISE_ROW(avx2),
#else
    {nullptr, nullptr},
#endif
#if defined(ADAMCORE_HAVE_AVX512)
    ADAMCORE_ELEMENTWISE_ROW(avx512),
#else
    {nullptr, nullptr},
#endif
#if defined(ADAMCORE_HAVE_NEON)
    ADAMCORE_ELEMENTWISE_ROW(neon),
#else
    {nullptr, nullptr},
#endif
};
#undef ADAMCORE_ELEMENTWISE_ROW

}  // namespace adamcore::detail
