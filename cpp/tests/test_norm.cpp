// C++ tests of the gradient norm (adamcore/norm.h), without Python:
//  1. every ISA this CPU runs gives the scalar ISA's bits, for every dtype, norm type,
//     many lengths (chunk and lane boundaries), with and without special values;
//  2. thread counts 1..4 give the same bits;
//  3. any split of the tensor list into calls, in any order, merged in any order,
//     gives the same bits as one call;
//  4. the exact accumulator rounds once (ties to even, sticky bits, subnormals,
//     overflow) and is order-independent;
//  5. NaN and Inf; torch's clip coefficient; the scaling on every ISA.
// Run natively, under qemu-aarch64 for NEON, and under the sanitizers by .ci/run.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "adamcore/adamcore.h"
#include "check.h"
#include "adamcore/norm.h"
#include "kernel_api.h"

#define ADAMCORE_NS testnormconv
#include "vec/vec_scalar.h"
#undef ADAMCORE_NS

namespace {

using adamcore::DType;
using adamcore::GradBuffer;
namespace conv = adamcore::testnormconv;

using adamcore_test::check;

std::uint64_t bits64(double x) {
  std::uint64_t b;
  std::memcpy(&b, &x, 8);
  return b;
}
bool same(double a, double b) { return (std::isnan(a) && std::isnan(b)) || bits64(a) == bits64(b); }
std::string show(double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", x);
  return buf;
}

// A tensor's storage: bytes of `size` elements of `dtype`, filled from float values.
struct Tensor {
  DType dtype;
  std::size_t size;
  std::vector<unsigned char> bytes;
  GradBuffer view() const { return {bytes.data(), size, dtype}; }
};

Tensor make_tensor(std::mt19937& rng, DType dtype, std::size_t n, bool specials, float scale) {
  std::normal_distribution<double> normal(0.0, scale);
  std::uniform_int_distribution<int> pick(0, 199);
  Tensor t{dtype, n, {}};
  t.bytes.resize(n * adamcore::dtype_size(dtype) + 1);
  for (std::size_t i = 0; i < n; ++i) {
    double x = normal(rng);
    if (specials) {
      switch (pick(rng)) {
        case 0: x = 0.0; break;
        case 1: x = -0.0; break;
        case 2: x = 1e-40; break;  // float32 subnormal
        case 3: x = -3e-39; break;
        case 4: x = 3e37; break;   // huge
        case 5: x = 1e-30; break;
        case 6: x = 6e4; break;    // near float16's max
        case 7: x = 1e-7; break;   // float16 subnormal
        default: break;
      }
    }
    unsigned char* p = t.bytes.data() + i * adamcore::dtype_size(dtype);
    if (dtype == DType::float64) {
      std::memcpy(p, &x, 8);
    } else if (dtype == DType::float32) {
      const float f = static_cast<float>(x);
      std::memcpy(p, &f, 4);
    } else {
      const std::uint16_t h = dtype == DType::bfloat16 ? conv::float_to_bf16(static_cast<float>(x))
                                                       : conv::float_to_f16(static_cast<float>(x));
      std::memcpy(p, &h, 2);
    }
  }
  return t;
}

void set_value(Tensor& t, std::size_t i, double x) {
  unsigned char* p = t.bytes.data() + i * adamcore::dtype_size(t.dtype);
  if (t.dtype == DType::float64) {
    std::memcpy(p, &x, 8);
  } else if (t.dtype == DType::float32) {
    const float f = static_cast<float>(x);
    std::memcpy(p, &f, 4);
  } else {
    const std::uint16_t h = t.dtype == DType::bfloat16 ? conv::float_to_bf16(static_cast<float>(x))
                                                       : conv::float_to_f16(static_cast<float>(x));
    std::memcpy(p, &h, 2);
  }
}

double get_value(const Tensor& t, std::size_t i) {
  const unsigned char* p = t.bytes.data() + i * adamcore::dtype_size(t.dtype);
  if (t.dtype == DType::float64) {
    double x;
    std::memcpy(&x, p, 8);
    return x;
  }
  if (t.dtype == DType::float32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  std::uint16_t h;
  std::memcpy(&h, p, 2);
  return t.dtype == DType::bfloat16 ? conv::bf16_to_float(h) : conv::f16_to_float(h);
}

std::vector<adamcore::Isa> supported_isas() {
  std::vector<adamcore::Isa> out;
  for (int i = 0; i < adamcore::kIsaCount; ++i) {
    const auto isa = static_cast<adamcore::Isa>(i);
    if (adamcore::isa_supported(isa)) out.push_back(isa);
  }
  return out;
}

std::vector<GradBuffer> views(const std::vector<Tensor>& ts) {
  std::vector<GradBuffer> v;
  for (const auto& t : ts) v.push_back(t.view());
  return v;
}

const DType kDtypes[] = {DType::float32, DType::float64, DType::bfloat16, DType::float16};
const double kNormTypes[] = {2.0, 1.0, INFINITY, 3.0, 0.5};
const std::size_t kSizes[] = {0, 1, 7, 31, 32, 33, 100, 4095, 4096, 4097, 8191, 20001};

// 1 and 2: every ISA and thread count gives the scalar ISA's single-thread bits.
void test_isas_and_threads() {
  const auto isas = supported_isas();
  std::mt19937 rng(1);
  for (DType dtype : kDtypes) {
    for (bool specials : {false, true}) {
      std::vector<Tensor> ts;
      for (std::size_t n : kSizes) ts.push_back(make_tensor(rng, dtype, n, specials, 1.5f));
      const auto v = views(ts);
      for (double p : kNormTypes) {
        // (General p is host code, the same on every ISA: one of them is enough here.)
        if (p == 0.5) continue;
        adamcore::set_isa(adamcore::Isa::scalar);
        adamcore::set_num_threads(1);
        // Per tensor and all together.
        std::vector<double> want;
        for (const auto& g : v) want.push_back(adamcore::grad_norm(&g, 1, p));
        const double want_all = adamcore::grad_norm(v.data(), v.size(), p);
        for (adamcore::Isa isa : isas) {
          adamcore::set_isa(isa);
          for (int threads : {1, 2, 4}) {
            adamcore::set_num_threads(threads);
            adamcore::set_parallel_threshold(threads == 1 ? SIZE_MAX : 1);
            const std::string what = std::string(adamcore::isa_name(isa)) + " " +
                                     adamcore::dtype_name(dtype) + " p=" + show(p) +
                                     " threads=" + std::to_string(threads) +
                                     (specials ? " specials" : "");
            for (std::size_t t = 0; t < v.size(); ++t) {
              const double got = adamcore::grad_norm(&v[t], 1, p);
              check(same(got, want[t]), what + " size " + std::to_string(v[t].size) + ": " +
                                            show(got) + " != " + show(want[t]));
            }
            const double got = adamcore::grad_norm(v.data(), v.size(), p);
            check(same(got, want_all), what + " all: " + show(got) + " != " + show(want_all));
          }
        }
      }
    }
  }
  adamcore::set_isa(adamcore::best_isa());
  adamcore::set_num_threads(1);
  adamcore::set_parallel_threshold(std::size_t{1} << 14);
}

// 3: random splits into calls, permutations, mixed dtypes, merged in random order.
void test_splits_and_orders() {
  std::mt19937 rng(2);
  std::vector<Tensor> ts;
  std::uniform_int_distribution<int> size_pick(0, 20000);
  for (int i = 0; i < 24; ++i) {
    ts.push_back(make_tensor(rng, kDtypes[i % 4], static_cast<std::size_t>(size_pick(rng)),
                             i % 5 == 0, 0.01f * static_cast<float>(i + 1)));
  }
  const auto isas = supported_isas();
  for (double p : kNormTypes) {
    adamcore::set_isa(adamcore::Isa::scalar);
    adamcore::set_num_threads(1);
    const auto v = views(ts);
    const double want = adamcore::grad_norm(v.data(), v.size(), p);
    for (int trial = 0; trial < 20; ++trial) {
      adamcore::set_isa(isas[static_cast<std::size_t>(trial) % isas.size()]);
      adamcore::set_num_threads(1 + trial % 3);
      adamcore::set_parallel_threshold(trial % 2 ? 1 : SIZE_MAX);
      std::vector<GradBuffer> order = v;
      std::shuffle(order.begin(), order.end(), rng);
      std::vector<adamcore::NormAccumulator> parts;
      std::size_t at = 0;
      while (at < order.size()) {
        const std::size_t n = 1 + rng() % 6;
        const std::size_t take = std::min(n, order.size() - at);
        adamcore::NormAccumulator a(p);
        a.add(order.data() + at, take);
        parts.push_back(a);
        at += take;
      }
      std::shuffle(parts.begin(), parts.end(), rng);
      adamcore::NormAccumulator total(p);
      for (const auto& a : parts) total.merge(a);
      check(same(total.norm(), want), "split trial " + std::to_string(trial) + " p=" + show(p) +
                                          ": " + show(total.norm()) + " != " + show(want));
      std::uint64_t count = 0;
      for (const auto& g : v) count += g.size;
      check(total.elements() == count, "elements counted");
    }
  }
  adamcore::set_isa(adamcore::best_isa());
  adamcore::set_num_threads(1);
  adamcore::set_parallel_threshold(std::size_t{1} << 14);
}

// 4: the exact accumulator.
void test_exact_accumulator() {
  using A = adamcore::NormAccumulator;
  {
    A a(1.0);  // ties to even: 1 + 2^-53 -> 1; with a sticky bit below -> up
    a.add_chunk_value(1.0);
    a.add_chunk_value(std::ldexp(1.0, -53));
    check(a.total() == 1.0, "tie to even rounds down");
    a.add_chunk_value(std::ldexp(1.0, -1074));
    check(a.total() == std::nextafter(1.0, 2.0), "sticky bit rounds up: " + show(a.total()));
  }
  {
    A a(1.0);  // 1 + 3 * 2^-53: tie at odd -> up
    a.add_chunk_value(1.0);
    a.add_chunk_value(3 * std::ldexp(1.0, -53));
    check(a.total() == 1.0 + 4 * std::ldexp(1.0, -53), "tie to even rounds up from odd");
  }
  {
    A a(1.0);  // subnormals add exactly
    for (int i = 0; i < 3; ++i) a.add_chunk_value(std::ldexp(1.0, -1074));
    check(a.total() == 3 * std::ldexp(1.0, -1074), "subnormals exact");
    a.add_chunk_value(std::ldexp(1.0, -1022));
    check(a.total() == std::ldexp(1.0, -1022) + 3 * std::ldexp(1.0, -1074), "subnormal + normal");
  }
  {
    A a(1.0);  // a huge and a tiny value: the tiny one only as a sticky bit
    a.add_chunk_value(std::ldexp(1.0, 1000));
    a.add_chunk_value(std::ldexp(1.0, -1000));
    check(a.total() == std::ldexp(1.0, 1000), "huge + tiny");
    a.add_chunk_value(std::numeric_limits<double>::max());
    a.add_chunk_value(std::numeric_limits<double>::max());
    check(std::isinf(a.total()), "overflow past DBL_MAX gives inf");
  }
  {
    // Order independence and agreement with a long double sum of values that fit.
    std::mt19937 rng(3);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::vector<double> xs;
    for (int i = 0; i < 5000; ++i) xs.push_back(std::ldexp(u(rng), static_cast<int>(rng() % 40) - 20));
    A first(2.0);
    for (double x : xs) first.add_chunk_value(x);
    for (int trial = 0; trial < 5; ++trial) {
      std::shuffle(xs.begin(), xs.end(), rng);
      A a(2.0), b(2.0);
      for (std::size_t i = 0; i < xs.size(); ++i) (i % 3 ? a : b).add_chunk_value(xs[i]);
      b.merge(a);
      check(same(b.total(), first.total()), "accumulator order " + std::to_string(trial));
    }
    // Exact reference: the values are multiples of 2^-73 below 2^20; an integer sum in
    // units of 2^-73 fits in 128 bits (5000 * 2^93 < 2^106).
    unsigned __int128 units = 0;
    for (double x : xs) units += static_cast<unsigned __int128>(std::ldexp(x, 73));
    // Round the 128-bit integer to double by hand (to nearest even).
    int top = 127;
    while (top > 0 && !((units >> top) & 1)) --top;
    unsigned __int128 m = units;
    int shift = top > 52 ? top - 52 : 0;
    unsigned __int128 q = m >> shift;
    if (shift > 0) {
      const unsigned __int128 rest = m & ((static_cast<unsigned __int128>(1) << shift) - 1);
      const unsigned __int128 half = static_cast<unsigned __int128>(1) << (shift - 1);
      if (rest > half || (rest == half && (q & 1))) ++q;
    }
    const double want = std::ldexp(static_cast<double>(static_cast<std::uint64_t>(q)), shift - 73);
    check(same(first.total(), want), "exact sum " + show(first.total()) + " vs " + show(want));
  }
}

// 5a: NaN and Inf.
void test_nonfinite() {
  std::mt19937 rng(4);
  for (DType dtype : kDtypes) {
    for (double p : kNormTypes) {
      for (adamcore::Isa isa : supported_isas()) {
        adamcore::set_isa(isa);
        Tensor t = make_tensor(rng, dtype, 9000, false, 1.0f);
        GradBuffer g = t.view();
        check(std::isfinite(adamcore::grad_norm(&g, 1, p)), "finite");
        set_value(t, 4500, INFINITY);
        check(std::isinf(adamcore::grad_norm(&g, 1, p)), "inf element");
        set_value(t, 8999, -NAN);
        check(std::isnan(adamcore::grad_norm(&g, 1, p)), "nan wins over inf");
        set_value(t, 4500, 1.0);
        check(std::isnan(adamcore::grad_norm(&g, 1, p)), "nan element");
        bool nonfinite = false;
        std::vector<unsigned char> before = t.bytes;
        const double n = adamcore::clip_grad_norm(&g, 1, 1.0, p, true, &nonfinite);
        check(std::isnan(n) && nonfinite && before == t.bytes, "error_if_nonfinite writes nothing");
      }
    }
  }
  GradBuffer none{};
  check(adamcore::grad_norm(&none, 0, 2.0) == 0.0, "no tensors: 0");
  adamcore::set_isa(adamcore::best_isa());
}

// 5b: accuracy against a long double reference.
void test_accuracy() {
  std::mt19937 rng(5);
  for (DType dtype : kDtypes) {
    Tensor t = make_tensor(rng, dtype, 300000, false, 0.3f);
    long double sum2 = 0, sum1 = 0, mx = 0;
    for (std::size_t i = 0; i < t.size; ++i) {
      const long double x = std::fabs(get_value(t, i));
      sum2 += x * x;
      sum1 += x;
      mx = std::max(mx, x);
    }
    GradBuffer g = t.view();
    const double l2 = adamcore::grad_norm(&g, 1, 2.0);
    const double l1 = adamcore::grad_norm(&g, 1, 1.0);
    const double li = adamcore::grad_norm(&g, 1, INFINITY);
    const double l3 = adamcore::grad_norm(&g, 1, 3.0);
    long double sum3 = 0;
    for (std::size_t i = 0; i < t.size; ++i) {
      const long double x = std::fabs(get_value(t, i));
      sum3 += x * x * x;
    }
    const long double want3 = std::cbrt(sum3);
    check(std::fabs(l2 - std::sqrt(static_cast<double>(sum2))) <= 1e-14 * l2, "l2 accuracy");
    check(std::fabs(l1 - static_cast<double>(sum1)) <= 1e-14 * l1, "l1 accuracy");
    check(li == static_cast<double>(mx), "linf exact");
    check(std::fabs(l3 - static_cast<double>(want3)) <= 1e-12 * l3,
          "l3 accuracy " + show(l3) + " vs " + show(static_cast<double>(want3)));
  }
}

// 5c: torch's clip coefficient (values from torch 2.13, tests/test_clip.py checks the
// recipe against torch itself), and the scaling on every ISA.
void test_coefficient_and_scaling() {
  // float32: fl(fl(1 / fl(fl(n) + fl(1e-6))) * fl(max_norm)), clamped to 1.
  const float n = 10.0f;
  const float want = (1.0f / (n + static_cast<float>(1e-6))) * 1.0f;
  check(adamcore::clip_coefficient(10.0, 1.0, DType::float32) == static_cast<double>(want),
        "float32 coefficient");
  check(adamcore::clip_coefficient(0.5, 1.0, DType::float32) == 1.0, "clamped to 1");
  check(std::isnan(adamcore::clip_coefficient(NAN, 1.0, DType::float32)), "NaN coefficient");
  check(adamcore::clip_coefficient(INFINITY, 1.0, DType::float32) == 0.0, "inf norm: 0");
  check(adamcore::clip_coefficient(10.0, 1.0, DType::float64) == (1.0 / (10.0 + 1e-6)) * 1.0,
        "float64 coefficient");
  const double cb = adamcore::clip_coefficient(10.0, 1.0, DType::bfloat16);
  check(conv::bf16_to_float(conv::float_to_bf16(static_cast<float>(cb))) == cb, "bf16 coefficient is a bf16");

  {
    std::mt19937 r(7);
    const Tensor a = make_tensor(r, DType::bfloat16, 5000, false, 1.0f);
    const Tensor b = make_tensor(r, DType::float16, 3000, false, 1.0f);
    const GradBuffer two[] = {a.view(), b.view()};
    const adamcore::ClipInfo info = adamcore::clip_info(two, 2, 0.5);
    check(info.coef_dtype == DType::float32, "bfloat16 with float16 promotes to float32");
    check(same(info.norm, adamcore::grad_norm(two, 2)) && !info.nonfinite, "clip_info norm");
    check(info.coef == adamcore::clip_coefficient(info.norm, 0.5, DType::float32), "clip_info coef");
    check(adamcore::clip_info(two, 0, 0.5).coef == 1.0, "no grads: coefficient 1");
  }

  std::mt19937 rng(6);
  for (DType dtype : kDtypes) {
    const Tensor base = make_tensor(rng, dtype, 70001, true, 2.0f);
    std::vector<unsigned char> want_bytes;
    for (adamcore::Isa isa : supported_isas()) {
      for (int threads : {1, 3}) {
        adamcore::set_isa(isa);
        adamcore::set_num_threads(threads);
        adamcore::set_parallel_threshold(threads == 1 ? SIZE_MAX : 1);
        Tensor t = base;
        GradBuffer g = t.view();
        adamcore::scale_grads(&g, 1, 0.3);
        if (want_bytes.empty()) {
          want_bytes = t.bytes;
          // scalar reference: float32 arithmetic (double for float64), rounded to the dtype
          bool ok = true;
          for (std::size_t i = 0; i < t.size && ok; ++i) {
            const double x = get_value(base, i);
            double y = dtype == DType::float64 ? x * 0.3
                                                : static_cast<double>(static_cast<float>(x) * 0.3f);
            Tensor one{dtype, 1, std::vector<unsigned char>(8)};
            set_value(one, 0, y);
            const double r = get_value(one, 0);
            const double got = get_value(t, i);
            ok = same(r, got);
            if (!ok) check(false, std::string("scale value ") + adamcore::dtype_name(dtype) + " at " +
                                      std::to_string(i) + ": " + show(got) + " vs " + show(r));
          }
        } else {
          check(t.bytes == want_bytes, std::string("scale bits ") + adamcore::isa_name(isa) + " " +
                                           adamcore::dtype_name(dtype));
        }
      }
    }
  }
  adamcore::set_isa(adamcore::best_isa());
  adamcore::set_num_threads(1);
  adamcore::set_parallel_threshold(std::size_t{1} << 14);
}

}  // namespace

int main() {
  std::printf("ISAs here:");
  for (auto isa : supported_isas()) std::printf(" %s", adamcore::isa_name(isa));
  std::printf("\n");
  test_exact_accumulator();
  test_isas_and_threads();
  test_splits_and_orders();
  test_nonfinite();
  test_accuracy();
  test_coefficient_and_scaling();
  return adamcore_test::report();
}
