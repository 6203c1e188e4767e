// The gradient norm's per-ISA code: the value of each chunk of a buffer, and the
// in-place scaling of clip_grad_norm.
//
// Included by kernels_<isa>.cpp after kernels.inl (it uses that file's Vec, VecF64 and
// StorageOf). A chunk's value is the same on every ISA: element i of the chunk goes to
// lane i % kNormLanes of kNormLanes double accumulators, whatever the vector width
// (kNormLanes / VecF64::kLanes vectors hold them; the elements after the last whole
// group of kNormLanes are added one at a time to the same lanes, in the same order),
// and the lanes are summed in a fixed tree. Every operation is a correctly rounded
// IEEE operation on doubles; a float32 or 16-bit value and its square are exact in
// double, so for them fma(x, x, acc) (vector ISAs) equals acc + x*x (the scalar ISA,
// which would otherwise call libm's fma).
#include <cstddef>
#include <cstdint>

#include "norm_api.h"

namespace adamcore::ADAMCORE_NS {
namespace {

using detail::NormKind;

template <NormKind K, bool ExactSquare, class V>
inline V norm_term(V acc, V x) {
  if constexpr (K == NormKind::l2) {
    if constexpr (ExactSquare && V::kLanes > 1) {
      return fma(x, x, acc);
    } else {
      return add(acc, mul(x, x));
    }
  } else if constexpr (K == NormKind::l1) {
    return add(acc, absolute(x));
  } else {
    return maximum(acc, absolute(x));  // NaN if either is NaN
  }
}

template <NormKind K>
inline double norm_combine(double a, double b) {
  if constexpr (K == NormKind::linf) {
    return maximum(VecScalarF64{a}, VecScalarF64{b}).x;
  } else {
    return a + b;
  }
}

// The value of one chunk: n <= kNormChunk elements at p.
template <NormKind K, class S>
double chunk_value(const S* p, std::size_t n) {
  using V = VecF64;
  using One = VecScalarF64;
  constexpr bool kExactSquare = !std::is_same_v<S, double>;
  constexpr std::size_t kVecs = kNormLanes / V::kLanes;
  static_assert(kNormLanes % V::kLanes == 0, "whole vectors of lanes");
  V acc[kVecs];
  for (std::size_t k = 0; k < kVecs; ++k) acc[k] = V::set1(0.0);
  std::size_t i = 0;
  for (; i + kNormLanes <= n; i += kNormLanes) {
    for (std::size_t k = 0; k < kVecs; ++k) {
      acc[k] = norm_term<K, kExactSquare>(acc[k], widen_load(V{}, p + i + k * V::kLanes));
    }
  }
  double lanes[kNormLanes];
  for (std::size_t k = 0; k < kVecs; ++k) store(lanes + k * V::kLanes, acc[k]);
  for (std::size_t j = 0; i < n; ++i, ++j) {
    lanes[j] = norm_term<K, kExactSquare>(One{lanes[j]}, widen_load(One{}, p + i)).x;
  }
  for (std::size_t width = kNormLanes / 2; width >= 1; width /= 2) {
    for (std::size_t j = 0; j < width; ++j) lanes[j] = norm_combine<K>(lanes[j], lanes[j + width]);
  }
  return lanes[0];
}

template <NormKind K, class S>
void norm_chunks(const void* data, std::size_t size, std::size_t first, std::size_t count,
                 double* out) {
  const S* const p = static_cast<const S*>(data);
  for (std::size_t c = 0; c < count; ++c) {
    const std::size_t begin = (first + c) * kNormChunk;
    const std::size_t rest = size - begin;
    out[c] = chunk_value<K, S>(p + begin, rest < kNormChunk ? rest : kNormChunk);
  }
}

template <class S>
detail::NormChunksFn norm_chunks_for(NormKind kind) {
  switch (kind) {
    case NormKind::l1: return &norm_chunks<NormKind::l1, S>;
    case NormKind::linf: return &norm_chunks<NormKind::linf, S>;
    default: return &norm_chunks<NormKind::l2, S>;
  }
}

// clip_grad_norm's scaling: p[i] = p[i] * c in the storage's arithmetic (float for
// float32 and 16-bit storage, double for float64), stored rounded to nearest even.
template <class S>
void scale_range(void* data, std::size_t begin, std::size_t end, double coef) {
  using Math = std::conditional_t<std::is_same_v<S, double>, double, float>;
  using V = std::conditional_t<std::is_same_v<S, double>, VecF64, Vec>;
  using One = std::conditional_t<std::is_same_v<S, double>, VecScalarF64, VecScalar>;
  S* const p = static_cast<S*>(data);
  const Math c = static_cast<Math>(coef);
  const V cv = V::set1(c);
  const One c1 = One::set1(c);
  std::size_t i = begin;
  for (; i + V::kLanes <= end; i += V::kLanes) store(p + i, mul(V::load(p + i), cv));
  for (; i < end; ++i) store(p + i, mul(One::load(p + i), c1));
}

}  // namespace

detail::NormChunksFn norm_chunks_kernel(DType dtype, NormKind kind) {
  switch (dtype) {
    case DType::float64: return norm_chunks_for<double>(kind);
    case DType::bfloat16: return norm_chunks_for<detail::Bf16>(kind);
    case DType::float16: return norm_chunks_for<detail::F16>(kind);
    default: return norm_chunks_for<float>(kind);
  }
}

detail::ScaleFn scale_kernel(DType dtype) {
  switch (dtype) {
    case DType::float64: return &scale_range<double>;
    case DType::bfloat16: return &scale_range<detail::Bf16>;
    case DType::float16: return &scale_range<detail::F16>;
    default: return &scale_range<float>;
  }
}

}  // namespace adamcore::ADAMCORE_NS
