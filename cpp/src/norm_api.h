// Internal interface between norm.cpp and the per-ISA norm kernels (norm.inl, included
// by each kernels_<isa>.cpp). Plain data only.
#pragma once

#include <cstddef>

#include "adamcore/adamcore.h"
#include "adamcore/norm.h"

namespace adamcore::detail {

// What a chunk's value is: p = 2 the sum of squares, p = 1 the sum of |g|, inf the
// largest |g| (NaN if any element is NaN). Other p are computed on the host (norm.cpp).
enum class NormKind : int { l2 = 0, l1 = 1, linf = 2 };

// Writes the values of chunks [first, first + count) of one buffer of `size`
// elements (chunk c: elements [c * kNormChunk, min(size, (c + 1) * kNormChunk))).
using NormChunksFn = void (*)(const void* data, std::size_t size, std::size_t first,
                              std::size_t count, double* out);
// Multiplies elements [begin, end) of a buffer in place by coef (float32 and 16-bit
// buffers: by fl32(coef), in float32; float64: in double).
using ScaleFn = void (*)(void* data, std::size_t begin, std::size_t end, double coef);

}  // namespace adamcore::detail

#define ADAMCORE_DECLARE_NORM_ISA(ns)                                           \
  namespace adamcore::ns {                                                      \
  detail::NormChunksFn norm_chunks_kernel(DType dtype, detail::NormKind kind);  \
  detail::ScaleFn scale_kernel(DType dtype);                                    \
  }

ADAMCORE_DECLARE_NORM_ISA(scalar)
#if defined(ADAMCORE_HAVE_AVX2)
ADAMCORE_DECLARE_NORM_ISA(avx2)
#endif
#if defined(ADAMCORE_HAVE_AVX512)
ADAMCORE_DECLARE_NORM_ISA(avx512)
#endif
#if defined(ADAMCORE_HAVE_NEON)
ADAMCORE_DECLARE_NORM_ISA(neon)
#endif
