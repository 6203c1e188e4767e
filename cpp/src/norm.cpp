// The total gradient norm (host side): the exact accumulator, the threads, the
// general-p terms, torch's clip coefficient and the scaling. The per-ISA chunk values
// are in norm.inl; what is guaranteed is in docs/numerics.md ("The gradient norm").
#include "adamcore/norm.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>
#include <vector>

#include "isa_table.h"
#include "norm_api.h"
#include "team.h"

// The scalar 16-bit conversions (compiled without ISA flags).
#define ADAMCORE_NS normhost
#include "vec/vec_scalar.h"
#undef ADAMCORE_NS

namespace adamcore {
namespace {

using detail::NormKind;

constexpr int kKindL2 = 0, kKindL1 = 1, kKindLinf = 2, kKindLp = 3;

int kind_of(double p) {
  if (p == 2.0) return kKindL2;
  if (p == 1.0) return kKindL1;
  if (std::isinf(p)) return kKindLinf;
  return kKindLp;
}

detail::NormChunksFn isa_norm_kernel(Isa isa, DType dtype, NormKind kind) {
  return detail::isa_row(isa).norm_chunks(dtype, kind);
}

detail::ScaleFn isa_scale_kernel(Isa isa, DType dtype) {
  return detail::isa_row(isa).scale(dtype);
}

// ---------------------------------------------------------------- general p
// |x|^p = 2^(p log2 |x|) with a log2 and an exp2 written in correctly rounded IEEE
// operations only (no libm pow, whose last bit differs between libms and between
// glibc's FMA and non-FMA variants): deterministic everywhere, relative error of a
// term about |p log2 x| * 2^-53 (below 1e-13 for every float32 input and p <= 8).
double det_log2(double x) {  // x > 0, finite
  int e = 0;
  double m = std::frexp(x, &e);  // x = m 2^e, m in [0.5, 1)
  if (m < 0.70710678118654752440) {
    m *= 2.0;
    e -= 1;
  }
  // ln m = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), |s| <= 0.1716
  const double s = (m - 1.0) / (m + 1.0);
  const double s2 = s * s;
  double poly = 1.0 / 27.0;
  for (int k = 25; k >= 1; k -= 2) poly = 1.0 / k + s2 * poly;
  const double ln_m = 2.0 * s * poly;
  return static_cast<double>(e) + ln_m * 1.44269504088896340736;  // 1/ln 2
}

double det_exp2(double y) {
  if (y != y) return y;
  if (y >= 1024.0) return std::numeric_limits<double>::infinity();
  if (y < -1080.0) return 0.0;
  const double n = std::floor(y);
  const double t = (y - n) * 0.69314718055994530942;  // in [0, ln 2)
  double sum = 1.0;
  for (int k = 22; k >= 1; --k) sum = 1.0 + sum * t / k;
  return std::ldexp(sum, static_cast<int>(n));
}

double det_pow(double x, double p) {  // x >= 0 or NaN
  if (x != x) return x;
  if (x == 0.0) return 0.0;
  if (std::isinf(x)) return x;
  return det_exp2(p * det_log2(x));
}

template <class S>
double load_double(const S* p, std::size_t i) {
  if constexpr (std::is_same_v<S, detail::Bf16>) {
    return normhost::bf16_to_float(p[i].bits);
  } else if constexpr (std::is_same_v<S, detail::F16>) {
    return normhost::f16_to_float(p[i].bits);
  } else {
    return static_cast<double>(p[i]);
  }
}

// The same chunks, lanes and tree as norm.inl, with |x|^p terms (host code: the same
// on every ISA).
template <class S>
void lp_chunks(const void* data, std::size_t size, std::size_t first, std::size_t count,
               double p, double* out) {
  const S* const base = static_cast<const S*>(data);
  for (std::size_t c = 0; c < count; ++c) {
    const std::size_t begin = (first + c) * kNormChunk;
    const std::size_t n = std::min(kNormChunk, size - begin);
    double lanes[kNormLanes] = {};
    for (std::size_t i = 0; i < n; ++i) {
      lanes[i % kNormLanes] += det_pow(std::fabs(load_double(base + begin, i)), p);
    }
    for (std::size_t width = kNormLanes / 2; width >= 1; width /= 2) {
      for (std::size_t j = 0; j < width; ++j) lanes[j] += lanes[j + width];
    }
    out[c] = lanes[0];
  }
}

void lp_chunks_any(DType dtype, const void* data, std::size_t size, std::size_t first,
                   std::size_t count, double p, double* out) {
  switch (dtype) {
    case DType::float64: return lp_chunks<double>(data, size, first, count, p, out);
    case DType::bfloat16: return lp_chunks<detail::Bf16>(data, size, first, count, p, out);
    case DType::float16: return lp_chunks<detail::F16>(data, size, first, count, p, out);
    default: return lp_chunks<float>(data, size, first, count, p, out);
  }
}

std::size_t chunks_of(std::size_t size) { return size / kNormChunk + (size % kNormChunk != 0); }

// How many threads a pass over `total` elements uses (as the optimizer steps decide).
int threads_for(std::size_t total) {
  int threads = get_num_threads();
  const std::size_t threshold = std::max<std::size_t>(get_parallel_threshold(), kNormChunk);
  const std::size_t worth = total / threshold + (total % threshold != 0 ? 1 : 0);
  if (worth < 2) return 1;
  return static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(threads), worth));
}


// Calls fn(t, first, n, member) for runs of chunks [first, first + n) of tensor t that
// together cover every chunk of every tensor once: on the calling thread (member 0),
// or, for a large call, in parts of up to 16 chunks (64K elements), about eight per
// thread, that `threads` threads claim one at a time (team.h).
template <class Fn>
void for_chunk_runs(const GradBuffer* grads, std::size_t count, int threads, const Fn& fn) {
  std::vector<std::size_t> first_chunk(count + 1, 0);
  for (std::size_t t = 0; t < count; ++t) {
    first_chunk[t + 1] = first_chunk[t] + chunks_of(grads[t].size);
  }
  const std::size_t all_chunks = first_chunk[count];
  if (all_chunks == 0) return;
  if (threads <= 1) {
    for (std::size_t t = 0; t < count; ++t) {
      if (first_chunk[t + 1] > first_chunk[t]) fn(t, 0, first_chunk[t + 1] - first_chunk[t], 0);
    }
    return;
  }
  const std::size_t per_part = std::max<std::size_t>(
      1, std::min<std::size_t>(16, all_chunks / (static_cast<std::size_t>(threads) * 8)));
  const std::size_t parts = all_chunks / per_part + (all_chunks % per_part != 0);
  const auto run_part = [&](std::size_t k, int member) {
    std::size_t from = k * per_part;
    const std::size_t to = std::min(all_chunks, from + per_part);
    auto t = static_cast<std::size_t>(
        std::upper_bound(first_chunk.begin(), first_chunk.end(), from) - first_chunk.begin() - 1);
    while (from < to) {
      const std::size_t end = std::min(to, first_chunk[t + 1]);
      if (end > from) fn(t, from - first_chunk[t], end - from, member);
      from = end;
      ++t;
    }
  };
  detail::run_parts(parts, threads, detail::PartFn(run_part));
}
}  // namespace

std::string check_norm_type(double p) {
  if (p > 0 && !std::isnan(p)) return {};  // finite p > 0, or +inf
  std::ostringstream out;
  out.precision(17);
  out << "norm_type must be a number > 0 or inf, got " << p;
  return out.str();
}

// ---------------------------------------------------------------- the exact accumulator
NormAccumulator::NormAccumulator(double norm_type) : norm_type_(norm_type) {
  kind_ = kind_of(norm_type);
  reset();
}

void NormAccumulator::reset() {
  std::memset(limbs_, 0, sizeof(limbs_));
  pending_ = 0;
  max_ = 0.0;
  nan_ = false;
  inf_ = false;
  elements_ = 0;
}

// limbs_[k] holds bits [32k, 32k + 32) of N, the sum in units of 2^-1074 (each limb may
// exceed 32 bits until normalize() propagates the carries).
void NormAccumulator::add_exact(double v) {
  std::uint64_t bits;
  std::memcpy(&bits, &v, 8);
  const unsigned exponent = static_cast<unsigned>(bits >> 52) & 0x7FFu;
  std::uint64_t mantissa = bits & ((std::uint64_t{1} << 52) - 1);
  unsigned pos = 0;  // v = mantissa * 2^(pos - 1074)
  if (exponent != 0) {
    mantissa |= std::uint64_t{1} << 52;
    pos = exponent - 1;
  }
  const unsigned __int128 x = static_cast<unsigned __int128>(mantissa) << (pos % 32);
  const unsigned limb = pos / 32;
  limbs_[limb] += static_cast<std::int64_t>(static_cast<std::uint64_t>(x) & 0xFFFFFFFFu);
  limbs_[limb + 1] += static_cast<std::int64_t>(static_cast<std::uint64_t>(x >> 32) & 0xFFFFFFFFu);
  limbs_[limb + 2] += static_cast<std::int64_t>(static_cast<std::uint64_t>(x >> 64));
  if (++pending_ >= (1u << 30)) normalize();
}

void NormAccumulator::normalize() {
  for (int k = 0; k + 1 < kLimbs; ++k) {
    limbs_[k + 1] += limbs_[k] >> 32;
    limbs_[k] &= 0xFFFFFFFF;
  }
  pending_ = 0;
}

void NormAccumulator::add_chunk_value(double v) {
  if (v != v) {
    nan_ = true;
  } else if (std::isinf(v)) {
    inf_ = true;
  } else if (kind_ == kKindLinf) {
    if (v > max_) max_ = v;
  } else if (v != 0.0) {
    add_exact(v);
  }
}

void NormAccumulator::merge(const NormAccumulator& other) {
  NormAccumulator o = other;
  o.normalize();
  normalize();
  for (int k = 0; k < kLimbs; ++k) limbs_[k] += o.limbs_[k];
  normalize();
  if (o.max_ > max_) max_ = o.max_;
  nan_ = nan_ || o.nan_;
  inf_ = inf_ || o.inf_;
  elements_ += o.elements_;
}

double NormAccumulator::total() const {
  if (kind_ == kKindLinf) return max_;
  NormAccumulator a = *this;
  a.normalize();
  const std::int64_t* l = a.limbs_;
  int top = kLimbs - 1;
  while (top >= 0 && l[top] == 0) --top;
  if (top < 0) return 0.0;
  const int high = 32 * top + (31 - __builtin_clz(static_cast<unsigned>(l[top])));
  if (high < 53) {  // fewer than 54 bits: exact (a subnormal or small normal)
    const std::uint64_t n = static_cast<std::uint64_t>(l[0]) |
                            (static_cast<std::uint64_t>(l[1]) << 32);
    return std::ldexp(static_cast<double>(n), -1074);
  }
  // Bits [high - 53, high]: 53 of mantissa and the rounding bit; the rest is sticky.
  const int low = high - 53;
  const int q = low / 32;
  unsigned __int128 window = 0;
  for (int k = 2; k >= 0; --k) {
    window <<= 32;
    if (q + k < kLimbs) window |= static_cast<std::uint64_t>(l[q + k]);
  }
  window >>= (low % 32);
  std::uint64_t w = static_cast<std::uint64_t>(window) & ((std::uint64_t{1} << 54) - 1);
  bool sticky = (static_cast<std::uint64_t>(l[q]) & ((std::uint64_t{1} << (low % 32)) - 1)) != 0;
  for (int k = 0; k < q && !sticky; ++k) sticky = l[k] != 0;
  std::uint64_t mantissa = w >> 1;
  if ((w & 1) && (sticky || (mantissa & 1))) ++mantissa;  // to nearest, ties to even
  return std::ldexp(static_cast<double>(mantissa), high - 52 - 1074);  // inf past DBL_MAX
}

double NormAccumulator::norm() const {
  if (nan_) return std::numeric_limits<double>::quiet_NaN();
  if (inf_) return std::numeric_limits<double>::infinity();
  const double t = total();
  switch (kind_) {
    case kKindL2: return std::sqrt(t);
    case kKindL1:
    case kKindLinf: return t;
    default: return t == 0.0 || std::isinf(t) ? t : det_exp2(det_log2(t) / norm_type_);
  }
}

void NormAccumulator::add(const GradBuffer* grads, std::size_t count) {
  std::size_t total = 0;
  for (std::size_t t = 0; t < count; ++t) total += grads[t].size;
  if (total == 0) return;
  elements_ += total;

  const Isa isa = active_isa();
  const bool lp = kind_ == kKindLp;
  const auto kind = static_cast<NormKind>(lp ? 0 : kind_);
  const double p = norm_type_;
  // One accumulator per team member (the runtime may grant fewer than asked), merged
  // exactly at the end; member 0's is this one.
  const int threads = threads_for(total);
  std::vector<NormAccumulator> helpers(static_cast<std::size_t>(threads - 1), NormAccumulator(p));
  const auto run = [&](std::size_t t, std::size_t first, std::size_t n, int member) {
    NormAccumulator* into = member == 0 ? this : &helpers[static_cast<std::size_t>(member) - 1];
    const GradBuffer& g = grads[t];
    const detail::NormChunksFn fn = lp ? nullptr : isa_norm_kernel(isa, g.dtype, kind);
    double values[16];
    while (n > 0) {
      const std::size_t batch = std::min<std::size_t>(n, 16);
      if (lp) {
        lp_chunks_any(g.dtype, g.data, g.size, first, batch, p, values);
      } else {
        fn(g.data, g.size, first, batch, values);
      }
      for (std::size_t i = 0; i < batch; ++i) into->add_chunk_value(values[i]);
      first += batch;
      n -= batch;
    }
  };
  for_chunk_runs(grads, count, threads, run);
  for (const auto& h : helpers) merge(h);  // (helpers count no elements)
}

double grad_norm(const GradBuffer* grads, std::size_t count, double norm_type) {
  NormAccumulator acc(norm_type);
  acc.add(grads, count);
  return acc.norm();
}

// ---------------------------------------------------------------- clipping
DType clip_dtype(const GradBuffer* grads, std::size_t count) {
  if (count == 0) return DType::none;
  DType d = grads[0].dtype;
  for (std::size_t t = 1; t < count; ++t) {
    const DType e = grads[t].dtype;
    if (e == d) continue;
    if (d == DType::float64 || e == DType::float64) {
      d = DType::float64;
    } else {
      d = DType::float32;  // float32 with anything, or bfloat16 with float16
    }
  }
  return d;
}

namespace {

// x rounded once to bfloat16 or float16 (via float32 rounded to odd, which has enough
// spare bits for a single rounding), returned as float.
float round_once_to(DType dtype, double x) {
  float f = static_cast<float>(x);
  if (static_cast<double>(f) != x && x == x) {
    if (std::fabs(static_cast<double>(f)) > std::fabs(x)) f = std::nextafter(f, 0.0f);
    std::uint32_t b;
    std::memcpy(&b, &f, 4);
    b |= 1u;
    std::memcpy(&f, &b, 4);
  }
  if (dtype == DType::bfloat16) return normhost::bf16_to_float(normhost::float_to_bf16(f));
  return normhost::f16_to_float(normhost::float_to_f16(f));
}

float round_to(DType dtype, float x) {
  if (dtype == DType::bfloat16) return normhost::bf16_to_float(normhost::float_to_bf16(x));
  if (dtype == DType::float16) return normhost::f16_to_float(normhost::float_to_f16(x));
  return x;
}

}  // namespace

double clip_coefficient(double total_norm, double max_norm, DType dtype) {
  if (dtype == DType::float64) {
    const double r = 1.0 / (total_norm + 1e-6);
    const double c = r * max_norm;
    return c > 1.0 ? 1.0 : c;  // NaN stays NaN, as torch.clamp
  }
  const float n = dtype == DType::float32 ? static_cast<float>(total_norm)
                                          : round_once_to(dtype, total_norm);
  const float d = round_to(dtype, n + static_cast<float>(1e-6));
  const float r = round_to(dtype, 1.0f / d);
  const float c = round_to(dtype, r * static_cast<float>(max_norm));
  return c > 1.0f ? 1.0 : static_cast<double>(c);
}

void scale_grads(const GradBuffer* grads, std::size_t count, double coef) {
  std::size_t total = 0;
  for (std::size_t t = 0; t < count; ++t) total += grads[t].size;
  const Isa isa = active_isa();
  // Element-wise: the split into chunks and threads changes nothing.
  for_chunk_runs(grads, count, threads_for(total), [&](std::size_t t, std::size_t first, std::size_t n, int) {
    const GradBuffer& g = grads[t];
    const std::size_t begin = first * kNormChunk;
    const std::size_t end = std::min(g.size, (first + n) * kNormChunk);
    isa_scale_kernel(isa, g.dtype)(const_cast<void*>(g.data), begin, end, coef);
  });
}

ClipInfo clip_info(const GradBuffer* grads, std::size_t count, double max_norm,
                   double norm_type) {
  ClipInfo info;
  info.norm = grad_norm(grads, count, norm_type);
  info.nonfinite = !std::isfinite(info.norm);
  info.coef_dtype = clip_dtype(grads, count);
  info.coef = count == 0 ? 1.0 : clip_coefficient(info.norm, max_norm, info.coef_dtype);
  return info;
}

double clip_grad_norm(const GradBuffer* grads, std::size_t count, double max_norm,
                      double norm_type, bool error_if_nonfinite, bool* nonfinite) {
  const ClipInfo info = clip_info(grads, count, max_norm, norm_type);
  if (nonfinite) *nonfinite = info.nonfinite;
  if (info.nonfinite && error_if_nonfinite) return info.norm;
  if (info.coef != 1.0) scale_grads(grads, count, info.coef);  // x * 1 == x: nothing to write
  return info.norm;
}

}  // namespace adamcore
