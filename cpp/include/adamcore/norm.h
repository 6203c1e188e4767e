// adamcore: the total gradient norm and gradient clipping.
//
// The norm of a list of gradient buffers (float32, float64, bfloat16, float16) is
// bit-identical on every ISA (scalar, AVX2, AVX-512, NEON), for every thread count
// and for any split of the list into calls or groups, in any order:
//   - each tensor is cut into chunks of kNormChunk elements by tensor-relative index;
//   - inside a chunk, element i goes to lane i % kNormLanes of kNormLanes double
//     accumulators (every ISA builds the same lanes), the lanes are reduced in a fixed
//     tree (lane j += lane j + w for w = 16, 8, 4, 2, 1);
//   - every chunk's value is added into an EXACT fixed-point accumulator, so the order
//     in which chunks, threads, tensors and calls are combined cannot change a bit;
//   - the total is rounded to double once, then the root is taken (docs/numerics.md,
//     "The gradient norm").
// float32 and 16-bit values and their squares are exact in double.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "adamcore/adamcore.h"

namespace adamcore {

constexpr std::size_t kNormChunk = 4096;  // elements per chunk
constexpr std::size_t kNormLanes = 32;    // double accumulators per chunk

// One gradient buffer: `size` contiguous elements of `dtype`.
struct GradBuffer {
  const void* data = nullptr;
  std::size_t size = 0;
  DType dtype = DType::float32;
};

// Empty when `norm_type` is accepted (finite and > 0, or +inf), else a message that
// starts with "norm_type".
std::string check_norm_type(double norm_type);

// The exact sum behind a norm: a fixed-point integer over the whole range of
// non-negative finite doubles (2^-1074 to 2^1024, with room for 2^64 terms), plus the
// running maximum (inf-norm) and flags for NaN and Inf terms. Adding and merging are
// integer operations, so any order gives the same state.
class NormAccumulator {
 public:
  // norm_type: 2 (the default), 1, +inf or any finite p > 0 (check_norm_type).
  explicit NormAccumulator(double norm_type = 2.0);
  double norm_type() const { return norm_type_; }

  // Adds every element of `count` buffers (threads split the chunks).
  void add(const GradBuffer* grads, std::size_t count);
  // Adds what `other` (of the same norm_type) has accumulated.
  void merge(const NormAccumulator& other);
  void reset();
  // Total elements added.
  std::uint64_t elements() const { return elements_; }

  // The total norm: NaN if any element was NaN, else +inf if any was infinite (or the
  // sum overflows double), else the p-th root of the exact sum of the chunks' values,
  // rounded to double once (p = 2: std::sqrt of it; p = 1: it; inf: the largest |g|).
  double norm() const;
  // The exact sum of the chunks' values rounded to nearest double (the max for inf).
  double total() const;

  // Internal: adds one chunk's value (a sum of |g|^p, or a max for inf).
  void add_chunk_value(double v);

  static constexpr int kLimbs = 72;  // 32 value bits each, in int64 (carries wait)

 private:
  void add_exact(double v);
  void normalize();

  double norm_type_;
  int kind_;  // 0: p = 2, 1: p = 1, 2: inf, 3: other p
  std::int64_t limbs_[kLimbs];
  std::uint32_t pending_;  // additions since the last carry propagation
  double max_;
  bool nan_;
  bool inf_;
  std::uint64_t elements_;
};

// The total norm of `count` buffers in one call: NormAccumulator(norm_type).add(...).norm().
double grad_norm(const GradBuffer* grads, std::size_t count, double norm_type = 2.0);

// The dtype in which torch computes the clip coefficient for grads of these dtypes:
// the promotion of all of them (one dtype: itself; bfloat16 with float16: float32;
// anything with float32: float32; anything with float64: float64). none for count 0.
DType clip_dtype(const GradBuffer* grads, std::size_t count);

// torch's clip coefficient, min(max_norm / (total_norm + 1e-6), 1), in torch's
// arithmetic for a total norm of dtype `dtype` (torch: clip_coef = max_norm /
// (total_norm + 1e-6) is total_norm.add(1e-6).reciprocal().mul(max_norm), then
// clamp(max=1.0)):
//   float64:  c = (1 / (n + 1e-6)) * max_norm in double, then min(c, 1);
//   float32:  n32 = fl32(n); d = fl32(n32 + fl32(1e-6)); r = fl32(1 / d);
//             c = fl32(r * fl32(max_norm)); min(c, 1);
//   bfloat16, float16: the float32 lines with every result rounded to the dtype
//             (n rounded once from double to the dtype), as torch's 16-bit ops do.
// A NaN norm gives NaN (the clamp keeps NaN), an infinite one 0. The value returned
// is exactly representable in `dtype`.
double clip_coefficient(double total_norm, double max_norm, DType dtype);

// Multiplies every element of the buffers in place by `coef` as torch's
// _foreach_mul_(grads, coef_tensor) does: float64 grads g * coef in double; float32
// and 16-bit grads fl32(g * fl32(coef)) stored rounded to nearest even in their dtype.
// Threads split the elements; the result is element-wise, so it never depends on them.
void scale_grads(const GradBuffer* grads, std::size_t count, double coef);

// For a fused clip-and-step (one read of the grads for the norm, then the step): the
// norm, and the coefficient the step must apply, as clip_grad_norm would.
struct ClipInfo {
  double norm = 0.0;           // grad_norm(grads, count, norm_type)
  double coef = 1.0;           // clip_coefficient(norm, max_norm, coef_dtype)
  DType coef_dtype = DType::none;  // clip_dtype(grads, count)
  bool nonfinite = false;      // norm is NaN or infinite
};
// To equal torch's clip_grad_norm_ followed by its step bit for bit, the step must use,
// for each gradient element g (skipped entirely when coef == 1, since g * 1 == g):
//   float64 grads: g * coef (double);
//   float32 grads: fl32(g * fl32(coef));
//   bfloat16/float16 grads: fl32(g * fl32(coef)) rounded to nearest even into the grads'
//   dtype and widened back (torch writes the clipped 16-bit grad before its step reads it).
// With error_if_nonfinite semantics the caller checks `nonfinite` and skips the step.
ClipInfo clip_info(const GradBuffer* grads, std::size_t count, double max_norm,
                   double norm_type = 2.0);

// clip_grad_norm in one call: the norm, the coefficient in clip_dtype(grads) and the
// scaling. Returns the total norm (double). With error_if_nonfinite and a NaN or
// infinite norm, writes nothing and sets *nonfinite (if given) to true.
double clip_grad_norm(const GradBuffer* grads, std::size_t count, double max_norm,
                      double norm_type = 2.0, bool error_if_nonfinite = false,
                      bool* nonfinite = nullptr);

}  // namespace adamcore
