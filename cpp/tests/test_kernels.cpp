// C++ tests of the kernel library, without Python:
//  1. every ISA this CPU runs gives the scalar ISA's bits, for every option
//     combination, many sizes and unaligned starts, over many steps, with special
//     values (zeros, subnormals, huge, NaN and Inf gradients);
//  2. the scalar ISA gives the bits of an independent, plainly written recipe;
//  3. thread counts 1..4 give identical bits and identical Γ statistics;
//  4. Γ statistics are identical on every ISA.
// Run natively, under qemu-aarch64 for NEON, and under ASan+UBSan by .ci/run.
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#include "adamcore/adamcore.h"
#include "check.h"
#include "kernel_api.h"
#include "team.h"

// The kernels' scalar 16-bit conversions, to build test buffers.
#define ADAMCORE_NS testconv
#include "vec/vec_scalar.h"
#undef ADAMCORE_NS

namespace {

using adamcore_test::check;

std::uint32_t bits(float x) {
  std::uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}

// Bitwise equality, except that any NaN equals any NaN (payloads are not part of the
// contract).
bool same(float a, float b) { return (std::isnan(a) && std::isnan(b)) || bits(a) == bits(b); }

// Index of the first differing element, or -1.
long first_mismatch(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!same(a[i], b[i])) return static_cast<long>(i);
  }
  return -1;
}

// Random values with a sprinkling of the awkward ones.
std::vector<float> make_values(std::mt19937& rng, std::size_t n, bool specials, float scale) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::uniform_int_distribution<int> pick(0, 39);
  std::vector<float> out(n);
  for (auto& x : out) {
    x = normal(rng);
    if (!specials) continue;
    switch (pick(rng)) {
      case 0: x = 0.0f; break;
      case 1: x = -0.0f; break;
      case 2: x = 1e-40f; break;            // subnormal
      case 3: x = -3e-39f; break;           // subnormal
      case 4: x = 3e37f; break;             // huge: g*g overflows
      case 5: x = 1e-30f; break;            // tiny: g*g underflows
      case 6: x = NAN; break;
      case 7: x = INFINITY; break;
      case 8: x = -INFINITY; break;
      default: break;
    }
  }
  return out;
}

struct AdamState {
  std::vector<float> p, m, v, vmax;
};

AdamState make_state(std::mt19937& rng, std::size_t n) {
  AdamState s;
  s.p = make_values(rng, n, false, 1.0f);
  s.m = make_values(rng, n, false, 0.01f);
  s.v = make_values(rng, n, false, 0.01f);
  for (auto& x : s.v) x = x * x;
  s.vmax = s.v;
  // A few running maxima that only a NaN-propagating, torch-ordered maximum keeps.
  for (std::size_t i = 0; i < n; i += 11) s.vmax[i] = NAN;
  for (std::size_t i = 5; i < n; i += 13) s.vmax[i] = -0.0f;
  return s;
}

// Runs `steps` steps on a copy of `start` over elements [offset, offset+n).
AdamState run_adam(const AdamState& start, const std::vector<std::vector<float>>& grads,
                   std::size_t offset, std::size_t n, const adamcore::AdamHyper& h,
                   std::vector<adamcore::GammaStats>* stats = nullptr) {
  AdamState s = start;
  for (std::size_t t = 0; t < grads.size(); ++t) {
    adamcore::AdamBuffers b;
    b.param = s.p.data() + offset;
    b.grad = grads[t].data() + offset;
    b.exp_avg = s.m.data() + offset;
    b.exp_avg_sq = s.v.data() + offset;
    b.max_exp_avg_sq = h.amsgrad ? s.vmax.data() + offset : nullptr;
    b.size = n;
    adamcore::GammaStats g;
    adamcore::adam_step(&b, 1, static_cast<std::int64_t>(t + 1), h, stats ? &g : nullptr);
    if (stats) stats->push_back(g);
  }
  return s;
}

bool same_stats(const adamcore::GammaStats& a, const adamcore::GammaStats& b) {
  return a.defined == b.defined && a.count == b.count && a.negative == b.negative &&
         a.undefined == b.undefined &&
         same(a.gamma_min, b.gamma_min) && same(a.lr_min, b.lr_min) && same(a.lr_max, b.lr_max);
}

std::vector<adamcore::Isa> supported_isas() {
  std::vector<adamcore::Isa> out;
  for (int i = 0; i < adamcore::kIsaCount; ++i) {
    const auto isa = static_cast<adamcore::Isa>(i);
    if (adamcore::isa_supported(isa)) out.push_back(isa);
  }
  return out;
}

std::vector<adamcore::AdamHyper> adam_variants() {
  std::vector<adamcore::AdamHyper> out;
  for (int wd = 0; wd < 3; ++wd)
    for (double beta1 : {0.9, 0.3})
      for (bool ams : {false, true})
        for (bool maximize : {false, true})
          for (bool bc : {true, false}) {
            adamcore::AdamHyper h;
            h.lr = 1e-2;
            h.beta1 = beta1;
            h.beta2 = beta1 == 0.9 ? 0.999 : 0.99;
            h.weight_decay = wd == 0 ? 0.0 : 0.05;
            h.decoupled = wd == 2;
            h.amsgrad = ams;
            h.maximize = maximize;
            h.bias_correction = bc;
            out.push_back(h);
          }
  return out;
}

std::string describe(const adamcore::AdamHyper& h) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "beta1=%g wd=%g decoupled=%d amsgrad=%d maximize=%d bc=%d",
                h.beta1, h.weight_decay, h.decoupled, h.amsgrad, h.maximize,
                h.bias_correction);
  return buf;
}

void test_adam_isas_match_scalar() {
  std::mt19937 rng(1234);
  const std::vector<std::size_t> sizes = {0, 1, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 257};
  const std::size_t steps = 12;
  for (const auto& h : adam_variants()) {
    for (std::size_t n : sizes) {
      for (std::size_t offset : {0, 1, 3}) {
        const std::size_t total = n + offset;
        const AdamState start = make_state(rng, total);
        std::vector<std::vector<float>> grads;
        for (std::size_t t = 0; t < steps; ++t) grads.push_back(make_values(rng, total, true, 1.0f));
        adamcore::set_isa(adamcore::Isa::scalar);
        std::vector<adamcore::GammaStats> ref_stats;
        const AdamState ref = run_adam(start, grads, offset, n, h, &ref_stats);
        for (adamcore::Isa isa : supported_isas()) {
          if (isa == adamcore::Isa::scalar) continue;
          adamcore::set_isa(isa);
          std::vector<adamcore::GammaStats> stats;
          const AdamState got = run_adam(start, grads, offset, n, h, &stats);
          const std::string what = std::string(adamcore::isa_name(isa)) + " adam " +
                                   describe(h) + " n=" + std::to_string(n) +
                                   " offset=" + std::to_string(offset);
          check(first_mismatch(got.p, ref.p) < 0, what + ": param");
          check(first_mismatch(got.m, ref.m) < 0, what + ": exp_avg");
          check(first_mismatch(got.v, ref.v) < 0, what + ": exp_avg_sq");
          check(first_mismatch(got.vmax, ref.vmax) < 0, what + ": max_exp_avg_sq");
          bool stats_equal = stats.size() == ref_stats.size();
          for (std::size_t t = 0; stats_equal && t < stats.size(); ++t) {
            stats_equal = same_stats(stats[t], ref_stats[t]);
          }
          check(stats_equal, what + ": gamma statistics");
        }
      }
    }
  }
}

// The recipe of docs/numerics.md written out plainly, one element at a time, for
// Adam with L2 decay, amsgrad and the high lerp branch (1 - beta1 >= 0.5).
void plain_adam(float& p, float g, float& m, float& v, float& vmax, std::int64_t t, double lr,
                double beta1, double beta2, double eps, double wd) {
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(t));
  const float W = static_cast<float>(1.0 - beta1);
  const float B2 = static_cast<float>(beta2);
  const float C2 = static_cast<float>(1.0 - beta2);
  const float D = static_cast<float>(std::sqrt(bc2));
  const float E = static_cast<float>(eps);
  const float S = static_cast<float>(-(lr / bc1));
  const float L = static_cast<float>(wd);
  g = std::fma(p, L, g);
  const float diff = g - m;
  m = W < 0.5f ? std::fma(W, diff, m) : std::fma(W - 1.0f, diff, g);
  const float c2g = C2 * g;
  const float vb2 = v * B2;
  v = std::fma(c2g, g, vb2);
  vmax = (std::isnan(vmax) || std::isnan(v)) ? NAN : (vmax > v ? vmax : v);
  const float root = std::sqrt(vmax);
  const float scaled = root / D;
  const float den = scaled + E;
  const float num = S * m;
  const float delta = num / den;
  p = p + delta;
}

void test_scalar_matches_plain_recipe() {
  std::mt19937 rng(99);
  const std::size_t n = 100;
  for (double beta1 : {0.3, 0.9}) {
    AdamState s = make_state(rng, n);
    AdamState plain = s;
    adamcore::AdamHyper h;
    h.lr = 3e-3;
    h.beta1 = beta1;
    h.beta2 = 0.99;
    h.weight_decay = 0.1;
    h.amsgrad = true;
    adamcore::set_isa(adamcore::Isa::scalar);
    for (std::int64_t t = 1; t <= 50; ++t) {
      const auto g = make_values(rng, n, false, 1.0f);
      adamcore::AdamBuffers b{s.p.data(), g.data(), s.m.data(), s.v.data(), s.vmax.data(), n};
      adamcore::adam_step(&b, 1, t, h);
      for (std::size_t i = 0; i < n; ++i) {
        plain_adam(plain.p[i], g[i], plain.m[i], plain.v[i], plain.vmax[i], t, h.lr, h.beta1,
                   h.beta2, h.eps, h.weight_decay);
      }
    }
    const std::string what = "scalar vs plain recipe beta1=" + std::to_string(beta1);
    check(first_mismatch(s.p, plain.p) < 0, what + ": param");
    check(first_mismatch(s.m, plain.m) < 0, what + ": exp_avg");
    check(first_mismatch(s.v, plain.v) < 0, what + ": exp_avg_sq");
    check(first_mismatch(s.vmax, plain.vmax) < 0, what + ": max_exp_avg_sq");
  }
}

void test_adagrad_isas_match_scalar() {
  std::mt19937 rng(77);
  for (double wd : {0.0, 0.01}) {
    for (bool maximize : {false, true}) {
      for (std::size_t n : {0, 1, 5, 16, 33, 100, 255}) {
        for (std::size_t offset : {0, 2}) {
          adamcore::AdagradHyper h;
          h.lr = 0.05;
          h.lr_decay = 0.01;
          h.weight_decay = wd;
          h.maximize = maximize;
          const std::size_t total = n + offset;
          const auto p0 = make_values(rng, total, false, 1.0f);
          std::vector<float> s0(total, 0.1f);
          std::vector<std::vector<float>> grads;
          for (int t = 0; t < 10; ++t) grads.push_back(make_values(rng, total, true, 1.0f));
          auto run = [&](adamcore::Isa isa, std::vector<adamcore::GammaStats>* stats) {
            adamcore::set_isa(isa);
            std::vector<float> p = p0, s = s0;
            for (std::size_t t = 0; t < grads.size(); ++t) {
              adamcore::AdagradBuffers b{p.data() + offset, grads[t].data() + offset,
                                         s.data() + offset, n};
              adamcore::GammaStats g;
              adamcore::adagrad_step(&b, 1, static_cast<std::int64_t>(t + 1), h, &g);
              stats->push_back(g);
            }
            p.insert(p.end(), s.begin(), s.end());
            return p;
          };
          std::vector<adamcore::GammaStats> ref_stats;
          const auto ref = run(adamcore::Isa::scalar, &ref_stats);
          for (adamcore::Isa isa : supported_isas()) {
            std::vector<adamcore::GammaStats> stats;
            const auto got = run(isa, &stats);
            const std::string what = std::string(adamcore::isa_name(isa)) + " adagrad wd=" +
                                     std::to_string(wd) + " n=" + std::to_string(n);
            check(first_mismatch(got, ref) < 0, what + ": param and state_sum");
            bool equal = true;
            for (std::size_t t = 0; t < stats.size(); ++t) equal = equal && same_stats(stats[t], ref_stats[t]);
            check(equal, what + ": gamma statistics");
          }
        }
      }
    }
  }
}

void test_threads_do_not_change_bits() {
  std::mt19937 rng(5);
  // Several tensors of awkward sizes, so thread cuts land inside tensors and at odd places.
  const std::vector<std::size_t> sizes = {1000, 3, 70000, 129, 0, 4097, 20000};
  adamcore::AdamHyper h;
  h.amsgrad = true;
  h.weight_decay = 0.01;
  h.decoupled = true;
  const std::size_t saved_threshold = adamcore::get_parallel_threshold();
  const int saved_threads = adamcore::get_num_threads();
  adamcore::set_parallel_threshold(64);
  for (adamcore::Isa isa : supported_isas()) {
    adamcore::set_isa(isa);
    std::vector<std::vector<float>> reference;
    std::vector<adamcore::GammaStats> ref_stats;
    for (int threads = 1; threads <= 4; ++threads) {
      adamcore::set_num_threads(threads);
      std::mt19937 local(42);
      std::vector<AdamState> states;
      std::vector<std::vector<float>> grads;
      for (std::size_t n : sizes) {
        states.push_back(make_state(local, n));
        grads.push_back(make_values(local, n, true, 1.0f));
      }
      std::vector<adamcore::GammaStats> stats;
      for (std::int64_t t = 1; t <= 3; ++t) {
        std::vector<adamcore::AdamBuffers> bufs;
        for (std::size_t i = 0; i < sizes.size(); ++i) {
          bufs.push_back({states[i].p.data(), grads[i].data(), states[i].m.data(),
                          states[i].v.data(), states[i].vmax.data(), sizes[i]});
        }
        adamcore::GammaStats g;
        adamcore::adam_step(bufs.data(), bufs.size(), t, h, &g);
        stats.push_back(g);
      }
      std::vector<float> flat;
      for (const auto& s : states) {
        for (const auto* vec : {&s.p, &s.m, &s.v, &s.vmax}) flat.insert(flat.end(), vec->begin(), vec->end());
      }
      if (threads == 1) {
        reference.push_back(flat);
        ref_stats = stats;
      } else {
        const std::string what = std::string(adamcore::isa_name(isa)) + " threads=" +
                                 std::to_string(threads);
        check(first_mismatch(flat, reference.back()) < 0, what + ": multi-tensor bits");
        bool equal = true;
        for (std::size_t t = 0; t < stats.size(); ++t) equal = equal && same_stats(stats[t], ref_stats[t]);
        check(equal, what + ": gamma statistics");
      }
    }
  }
  (void)rng;
  adamcore::set_parallel_threshold(saved_threshold);
  adamcore::set_num_threads(saved_threads);
}

// Several callers stepping different buffers at once share the thread pool (one of
// them gets it, the others run on their own threads) and get the serial bits.
void test_concurrent_callers() {
  const std::size_t saved_threshold = adamcore::get_parallel_threshold();
  const int saved_threads = adamcore::get_num_threads();
  adamcore::set_parallel_threshold(64);
  adamcore::set_num_threads(3);
  adamcore::AdamHyper h;
  h.weight_decay = 0.01;
  const std::size_t n = 5000;
  const int callers = 4;
  auto run = [&](int seed, AdamState* out) {
    std::mt19937 rng(static_cast<unsigned>(seed));
    AdamState s = make_state(rng, n);
    for (std::int64_t t = 1; t <= 30; ++t) {
      const auto g = make_values(rng, n, false, 1.0f);
      adamcore::AdamBuffers b{s.p.data(), g.data(), s.m.data(), s.v.data(), nullptr, n};
      adamcore::adam_step(&b, 1, t, h);
    }
    *out = s;
  };
  std::vector<AdamState> serial(callers), concurrent(callers);
  for (int c = 0; c < callers; ++c) run(c, &serial[c]);
  std::vector<std::thread> threads;
  for (int c = 0; c < callers; ++c) threads.emplace_back(run, c, &concurrent[c]);
  for (auto& t : threads) t.join();
  for (int c = 0; c < callers; ++c) {
    check(first_mismatch(concurrent[c].p, serial[c].p) < 0 &&
              first_mismatch(concurrent[c].v, serial[c].v) < 0,
          "concurrent caller " + std::to_string(c) + " matches serial");
  }
  adamcore::set_parallel_threshold(saved_threshold);
  adamcore::set_num_threads(saved_threads);
}

// The caller's flush-to-zero / denormals-are-zero mode reaches every helper thread:
// on subnormal-heavy data 1 and 4 threads give the same bits with the mode on, and
// the mode really changes the result (else the check would prove nothing).
struct FlushToZero {
  explicit FlushToZero(bool on) {
#if defined(__x86_64__) || defined(__i386__)
    saved = _mm_getcsr();
    _mm_setcsr(on ? (saved | 0x8040u) : (saved & ~0x8040u));  // FTZ | DAZ
#elif defined(__aarch64__)
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(saved));
    const std::uint64_t mode = on ? (saved | (1ull << 24)) : (saved & ~(1ull << 24));  // FZ
    __asm__ __volatile__("msr fpcr, %0" : : "r"(mode));
#else
    (void)on;
#endif
  }
  ~FlushToZero() {
#if defined(__x86_64__) || defined(__i386__)
    _mm_setcsr(saved);
#elif defined(__aarch64__)
    __asm__ __volatile__("msr fpcr, %0" : : "r"(saved));
#endif
  }
  std::uint64_t saved = 0;
};

std::vector<float> subnormal_run(int threads, bool flush) {
  adamcore::set_num_threads(threads);
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const std::size_t n = 50000;
  const float tiny = 1e-38f;
  std::vector<float> p(n), g(n), m(n), v(n);
  for (std::size_t i = 0; i < n; ++i) {
    p[i] = normal(rng) * tiny;
    g[i] = normal(rng) * tiny;
    m[i] = normal(rng) * tiny;
    v[i] = std::fabs(normal(rng)) * tiny;
  }
  adamcore::AdamHyper h;
  h.eps = 0.0;
  h.weight_decay = 0.5;
  {
    FlushToZero mode(flush);
    for (std::int64_t t = 1; t <= 3; ++t) {
      adamcore::AdamBuffers b{p.data(), g.data(), m.data(), v.data(), nullptr, n};
      adamcore::adam_step(&b, 1, t, h);
    }
  }
  p.insert(p.end(), m.begin(), m.end());
  p.insert(p.end(), v.begin(), v.end());
  return p;
}

void test_floating_point_mode_reaches_helpers() {
#if defined(__x86_64__) || defined(__i386__) || defined(__aarch64__)
  const std::size_t saved_threshold = adamcore::get_parallel_threshold();
  const int saved_threads = adamcore::get_num_threads();
  adamcore::set_parallel_threshold(1024);
  for (adamcore::Isa isa : supported_isas()) {
    adamcore::set_isa(isa);
    const std::string name = adamcore::isa_name(isa);
    const auto flushed_1 = subnormal_run(1, true);
    const auto flushed_4 = subnormal_run(4, true);
    const auto plain_1 = subnormal_run(1, false);
    const auto plain_4 = subnormal_run(4, false);
    check(first_mismatch(flushed_4, flushed_1) < 0, name + ": flush-to-zero, 4 threads == 1");
    check(first_mismatch(plain_4, plain_1) < 0, name + ": default mode, 4 threads == 1");
    check(first_mismatch(plain_1, flushed_1) >= 0, name + ": flush-to-zero changes the result");
  }
  adamcore::set_isa(adamcore::best_isa());
  adamcore::set_parallel_threshold(saved_threshold);
  adamcore::set_num_threads(saved_threads);
#endif
}

// A helper that is held up (as by a descheduled thread) makes the caller wait; the
// stall guard notices and the next steps run on the caller alone, with every part
// run exactly once in both cases.
void test_stall_guard() {
  adamcore::detail::reset_stall_guard();
  const std::int64_t stalls_before = adamcore::detail::stall_count();
  const std::size_t parts = 64;
  std::vector<std::atomic<int>> runs(parts);
  for (auto& r : runs) r = 0;
  std::atomic<int> helper_parts{0};
  const auto slow_helper = [&](std::size_t k, int member) {
    runs[k].fetch_add(1);
    if (member != 0) {
      helper_parts.fetch_add(1);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  };
  adamcore::detail::run_parts(parts, 2, adamcore::detail::PartFn(slow_helper));
  bool once = true;
  for (auto& r : runs) once = once && r.load() == 1;
  check(once, "stall guard: every part ran exactly once");
  if (helper_parts.load() > 0) {  // the helper did start (it may not, on a busy machine)
    check(adamcore::detail::stall_count() == stalls_before + 1, "stall guard: the wait is counted");
    check(adamcore::detail::solo_steps_left() > 0, "stall guard: next steps run alone");
    helper_parts = 0;
    for (auto& r : runs) r = 0;
    adamcore::detail::run_parts(parts, 2, adamcore::detail::PartFn(slow_helper));
    once = true;
    for (auto& r : runs) once = once && r.load() == 1;
    check(once && helper_parts.load() == 0, "stall guard: a solo step runs every part on the caller");
  }
  adamcore::detail::reset_stall_guard();
  check(adamcore::detail::solo_steps_left() == 0, "stall guard: reset");
}

// ---------------------------------------------------------------- buffer layouts
// A buffer of any dtype, as bytes.
struct Typed {
  adamcore::DType dtype = adamcore::DType::none;
  std::vector<unsigned char> bytes;
  void* at(std::size_t i) {
    return bytes.empty() ? nullptr : bytes.data() + i * adamcore::dtype_size(dtype);
  }
  const void* at(std::size_t i) const {
    return bytes.empty() ? nullptr : bytes.data() + i * adamcore::dtype_size(dtype);
  }
};

Typed encode(const std::vector<float>& values, adamcore::DType dtype) {
  Typed out;
  out.dtype = dtype;
  if (dtype == adamcore::DType::none) return out;
  out.bytes.resize(values.size() * adamcore::dtype_size(dtype));
  for (std::size_t i = 0; i < values.size(); ++i) {
    unsigned char* to = out.bytes.data() + i * adamcore::dtype_size(dtype);
    if (dtype == adamcore::DType::float32) {
      std::memcpy(to, &values[i], 4);
    } else if (dtype == adamcore::DType::float64) {
      const double d = static_cast<double>(values[i]) * (1.0 + 1e-12);  // use the extra bits
      std::memcpy(to, &d, 8);
    } else {
      const std::uint16_t h = dtype == adamcore::DType::bfloat16
                                  ? adamcore::testconv::float_to_bf16(values[i])
                                  : adamcore::testconv::float_to_f16(values[i]);
      std::memcpy(to, &h, 2);
    }
  }
  return out;
}

// Element i as a double (exact for every dtype).
double decode(const Typed& b, std::size_t i) {
  const unsigned char* from = b.bytes.data() + i * adamcore::dtype_size(b.dtype);
  switch (b.dtype) {
    case adamcore::DType::float32: { float f; std::memcpy(&f, from, 4); return f; }
    case adamcore::DType::float64: { double d; std::memcpy(&d, from, 8); return d; }
    default: {
      std::uint16_t h;
      std::memcpy(&h, from, 2);
      return b.dtype == adamcore::DType::bfloat16 ? adamcore::testconv::bf16_to_float(h)
                                                  : adamcore::testconv::f16_to_float(h);
    }
  }
}

// Index of the first element whose bits differ (any NaN equals any NaN), or -1.
long first_mismatch(const Typed& a, const Typed& b) {
  if (a.dtype != b.dtype || a.bytes.size() != b.bytes.size()) return 0;
  const std::size_t item = adamcore::dtype_size(a.dtype);
  for (std::size_t i = 0; item && i < a.bytes.size() / item; ++i) {
    const bool nan_a = std::isnan(decode(a, i)), nan_b = std::isnan(decode(b, i));
    if (nan_a && nan_b) continue;
    if (nan_a != nan_b || std::memcmp(&a.bytes[i * item], &b.bytes[i * item], item) != 0) {
      return static_cast<long>(i);
    }
  }
  return -1;
}

struct LayoutState {
  Typed p, m, v, vmax, copy;
};

std::string describe(const adamcore::Layout& l) {
  return std::string("params ") + adamcore::dtype_name(l.param) + ", grads " +
         adamcore::dtype_name(l.grad) + ", copy " + adamcore::dtype_name(l.param_copy);
}

// Every accepted layout: every ISA gives the scalar ISA's bits (params, state, the
// param copy, Γ statistics), for Adam's option families and AdaGrad, many sizes and
// unaligned starts, with special values in the gradients.
void test_layouts_isas_match_scalar() {
  std::mt19937 rng(2024);
  const std::vector<std::size_t> sizes = {0, 1, 5, 17, 33, 64, 131};
  std::vector<adamcore::AdamHyper> hypers;
  for (const auto& h : adam_variants()) {
    if (h.bias_correction && (h.maximize == h.amsgrad)) hypers.push_back(h);  // 12 of 48
  }
  for (const adamcore::Layout& layout : adamcore::detail::kLayouts) {
    check(adamcore::check_layout(layout).empty(), describe(layout) + ": accepted");
    for (std::size_t n : sizes) {
      for (std::size_t offset : {0, 1, 3}) {
        const std::size_t total = n + offset;
        const AdamState start = make_state(rng, total);
        std::vector<Typed> grads;
        for (int t = 0; t < 6; ++t) grads.push_back(encode(make_values(rng, total, true, 1.0f), layout.grad));
        LayoutState init{encode(start.p, layout.param), encode(start.m, layout.state),
                         encode(start.v, layout.state), encode(start.vmax, layout.state),
                         encode(std::vector<float>(total, NAN), layout.param_copy)};
        const auto run_adam_layout = [&](const adamcore::AdamHyper& h,
                                         std::vector<adamcore::GammaStats>* stats) {
          LayoutState s = init;
          for (std::size_t t = 0; t < grads.size(); ++t) {
            adamcore::AdamBuffers b{s.p.at(offset), grads[t].at(offset), s.m.at(offset),
                                    s.v.at(offset), h.amsgrad ? s.vmax.at(offset) : nullptr, n,
                                    s.copy.at(offset)};
            adamcore::GammaStats g;
            adamcore::adam_step(&b, 1, static_cast<std::int64_t>(t + 1), h, &g, -1.0, layout);
            stats->push_back(g);
          }
          return s;
        };
        const auto run_adagrad_layout = [&](std::vector<adamcore::GammaStats>* stats) {
          LayoutState s = init;
          adamcore::AdagradHyper h;
          h.lr = 0.05;
          h.lr_decay = 0.01;
          h.weight_decay = 0.01;
          for (std::size_t t = 0; t < grads.size(); ++t) {
            adamcore::AdagradBuffers b{s.p.at(offset), grads[t].at(offset), s.v.at(offset), n,
                                       s.copy.at(offset)};
            adamcore::GammaStats g;
            adamcore::adagrad_step(&b, 1, static_cast<std::int64_t>(t + 1), h, &g, -1.0, layout);
            stats->push_back(g);
          }
          return s;
        };
        const auto compare = [&](const LayoutState& got, const LayoutState& ref,
                                 const std::vector<adamcore::GammaStats>& stats,
                                 const std::vector<adamcore::GammaStats>& ref_stats,
                                 const std::string& what) {
          check(first_mismatch(got.p, ref.p) < 0, what + ": param");
          check(first_mismatch(got.m, ref.m) < 0, what + ": exp_avg");
          check(first_mismatch(got.v, ref.v) < 0, what + ": exp_avg_sq / sum");
          check(first_mismatch(got.vmax, ref.vmax) < 0, what + ": max_exp_avg_sq");
          check(first_mismatch(got.copy, ref.copy) < 0, what + ": param_copy");
          bool equal = stats.size() == ref_stats.size();
          for (std::size_t t = 0; equal && t < stats.size(); ++t) equal = same_stats(stats[t], ref_stats[t]);
          check(equal, what + ": gamma statistics");
        };
        for (const auto& h : hypers) {
          adamcore::set_isa(adamcore::Isa::scalar);
          std::vector<adamcore::GammaStats> ref_stats;
          const LayoutState ref = run_adam_layout(h, &ref_stats);
          if (layout.param_copy != adamcore::DType::none && n > 0) {
            // The copy is the updated params rounded: check it against the scalar
            // conversion of the float32 params.
            bool copy_ok = true;
            for (std::size_t i = offset; i < total; ++i) {
              const auto rounded = encode({static_cast<float>(decode(ref.p, i))}, layout.param_copy);
              copy_ok = copy_ok && std::memcmp(rounded.bytes.data(), ref.copy.at(i), 2) == 0;
            }
            check(copy_ok, describe(layout) + ": param_copy is the rounded params");
          }
          for (adamcore::Isa isa : supported_isas()) {
            if (isa == adamcore::Isa::scalar) continue;
            adamcore::set_isa(isa);
            std::vector<adamcore::GammaStats> stats;
            compare(run_adam_layout(h, &stats), ref, stats, ref_stats,
                    std::string(adamcore::isa_name(isa)) + " adam " + describe(layout) + " " +
                        describe(h) + " n=" + std::to_string(n) + " offset=" + std::to_string(offset));
          }
        }
        adamcore::set_isa(adamcore::Isa::scalar);
        std::vector<adamcore::GammaStats> ref_stats;
        const LayoutState ref = run_adagrad_layout(&ref_stats);
        for (adamcore::Isa isa : supported_isas()) {
          adamcore::set_isa(isa);
          std::vector<adamcore::GammaStats> stats;
          compare(run_adagrad_layout(&stats), ref, stats, ref_stats,
                  std::string(adamcore::isa_name(isa)) + " adagrad " + describe(layout) +
                      " n=" + std::to_string(n) + " offset=" + std::to_string(offset));
        }
      }
    }
  }
  adamcore::set_isa(adamcore::best_isa());
}

// Every 16-bit value survives a load and a store on every ISA (the vector body's
// widening and rounding are exact inverses), and every ISA rounds arbitrary float32
// bit patterns (ties, overflow, subnormals, NaN, Inf) into a param copy exactly as
// the scalar conversion does.
void test_conversions_on_every_isa() {
  adamcore::AdagradHyper still;  // lr = 0 and g = 0: the params come out as they went in
  still.lr = 0.0;
  still.eps = 1e-3;  // (float16's eps would round 1e-10 to 0, and -0/0 is NaN)
  for (adamcore::DType half : {adamcore::DType::bfloat16, adamcore::DType::float16}) {
    std::vector<std::uint16_t> all(65536), zeros(65536, 0), sums(65536, 0);
    for (std::size_t i = 0; i < all.size(); ++i) all[i] = static_cast<std::uint16_t>(i);
    const adamcore::Layout layout{half, half, half, adamcore::DType::none};
    for (adamcore::Isa isa : supported_isas()) {
      adamcore::set_isa(isa);
      std::vector<std::uint16_t> p = all;
      adamcore::AdagradBuffers b{p.data(), zeros.data(), sums.data(), p.size(), nullptr};
      adamcore::adagrad_step(&b, 1, 1, still, nullptr, -1.0, layout);
      bool same_bits = true;
      for (std::size_t i = 0; i < all.size(); ++i) {
        const float x = half == adamcore::DType::bfloat16 ? adamcore::testconv::bf16_to_float(all[i])
                                                          : adamcore::testconv::f16_to_float(all[i]);
        same_bits = same_bits && (std::isnan(x) || p[i] == all[i]);
      }
      check(same_bits, std::string(adamcore::isa_name(isa)) + " " + adamcore::dtype_name(half) +
                           ": every value loads and stores unchanged");
    }
    std::mt19937 rng(3);
    std::vector<float> values(100003);
    for (auto& x : values) {
      std::uint32_t bits = rng();
      if (rng() % 4 == 0) bits = (bits & 0xFFFF0000u) | 0x8000u;           // bf16 ties
      if (rng() % 4 == 0) bits = (bits & 0xFFFFE000u) | 0x1000u;           // fp16 ties
      if (rng() % 8 == 0) bits = 0x33000000u + (rng() % 0x5800000u);       // fp16 subnormals
      std::memcpy(&x, &bits, 4);
    }
    const adamcore::Layout copy_layout{adamcore::DType::float32, adamcore::DType::float32,
                                       adamcore::DType::float32, half};
    std::vector<std::uint16_t> ref;
    for (adamcore::Isa isa : supported_isas()) {
      adamcore::set_isa(isa);
      std::vector<float> p = values, g(values.size(), 0.0f), s(values.size(), 0.0f);
      std::vector<std::uint16_t> copy(values.size(), 0);
      adamcore::AdagradBuffers b{p.data(), g.data(), s.data(), p.size(), copy.data()};
      adamcore::adagrad_step(&b, 1, 1, still, nullptr, -1.0, copy_layout);
      bool as_scalar = true;
      for (std::size_t i = 0; i < values.size(); ++i) {
        const std::uint16_t want = half == adamcore::DType::bfloat16
                                       ? adamcore::testconv::float_to_bf16(values[i])
                                       : adamcore::testconv::float_to_f16(values[i]);
        const bool nan = std::isnan(values[i]);
        // NaN: a quiet NaN of the same sign (payload bits are not part of the contract)
        const std::uint16_t exp_mask = half == adamcore::DType::bfloat16 ? 0x7F80 : 0x7C00;
        as_scalar = as_scalar && (nan ? ((copy[i] & exp_mask) == exp_mask &&
                                         (copy[i] & ~exp_mask & 0x7FFF) != 0 &&
                                         (copy[i] & 0x8000) == (want & 0x8000))
                                      : copy[i] == want);
      }
      check(as_scalar, std::string(adamcore::isa_name(isa)) + " " + adamcore::dtype_name(half) +
                           ": param copy rounds as the scalar conversion");
    }
  }
  // The scalar conversions against values worked out by hand.
  using adamcore::testconv::float_to_bf16;
  using adamcore::testconv::float_to_f16;
  check(float_to_bf16(1.00390625f) == 0x3F80, "bf16: tie to even (down)");
  check(float_to_bf16(1.01171875f) == 0x3F82, "bf16: tie to even (up)");
  check(float_to_bf16(3.4e38f) == 0x7F80, "bf16: overflow to Inf");
  check(float_to_f16(65519.0f) == 0x7BFF && float_to_f16(65520.0f) == 0x7C00, "fp16: overflow edge");
  check(float_to_f16(0x1p-25f) == 0x0000 && float_to_f16(0x1.000002p-25f) == 0x0001,
        "fp16: smallest subnormal edge");
  check(float_to_f16(0x1.8p-24f) == 0x0002 && float_to_f16(0x1.4p-23f) == 0x0002,
        "fp16: subnormal ties to even");
  check(float_to_f16(1.0f + 0x1p-11f) == 0x3C00 && float_to_f16(1.0f + 0x3p-11f) == 0x3C02,
        "fp16: normal ties to even");
  adamcore::set_isa(adamcore::best_isa());
}

// The bfloat16 stochastic store rounds in one step, (bits + (r >> 16)) >> 16 with NaN made
// quiet; it claims to equal the two-step definition it replaced: round to a bfloat16 value
// by the carry of the dropped half (NaN kept as it is), then store that to nearest even.
// Checked on every high half (so every sign, exponent, NaN, Inf, max-finite and
// subnormal) with low halves and random bits at the carry edges and at random.
std::uint16_t bf16_stochastic_in_two_steps(float x, std::uint32_t r) {
  std::uint32_t kept = bits(x);
  if (!std::isnan(x)) kept = (kept + (r >> 16)) & 0xFFFF0000u;
  float rounded;
  std::memcpy(&rounded, &kept, 4);
  return adamcore::testconv::float_to_bf16(rounded);
}

void test_bf16_stochastic_store_is_the_two_step_rounding() {
  std::mt19937 rng(9);
  std::vector<std::uint32_t> lows = {0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFE, 0xFFFF};
  std::vector<std::uint32_t> randoms = {0x00000000u, 0x0000FFFFu, 0x00010000u, 0x7FFF0000u,
                                        0x80000000u, 0x8001FFFFu, 0xFFFF0000u, 0xFFFFFFFFu};
  for (int i = 0; i < 4; ++i) lows.push_back(rng() & 0xFFFFu);
  for (int i = 0; i < 4; ++i) randoms.push_back(rng());
  std::size_t checked = 0, mismatches = 0, carried = 0;
  for (std::uint32_t high = 0; high < 0x10000u; ++high) {
    for (std::uint32_t low : lows) {
      const std::uint32_t b = (high << 16) | low;
      float x;
      std::memcpy(&x, &b, 4);
      for (std::uint32_t r : randoms) {
        const std::uint16_t got = adamcore::testconv::float_to_bf16_stochastic(x, r);
        mismatches += got != bf16_stochastic_in_two_steps(x, r);
        carried += got != high;
        ++checked;
      }
    }
  }
  check(checked == 65536u * lows.size() * randoms.size() && mismatches == 0,
        "bf16 stochastic store: one step equals round-then-store-to-nearest (" +
            std::to_string(mismatches) + " of " + std::to_string(checked) + " differ)");
  check(carried > checked / 4 && carried < checked * 3 / 4,
        "bf16 stochastic store: the sample rounds both up and down");
  using adamcore::testconv::float_to_bf16_stochastic;
  // float32's largest finite value (bits 0x7F7FFFFF) carries to Inf unless r's top half is 0.
  check(float_to_bf16_stochastic(3.4028235e38f, 0x00010000u) == 0x7F80 &&
            float_to_bf16_stochastic(-3.4028235e38f, 0x00010000u) == 0xFF80 &&
            float_to_bf16_stochastic(3.4028235e38f, 0x0000FFFFu) == 0x7F7F,
        "bf16 stochastic store: max-finite carries to Inf");
  check(float_to_bf16_stochastic(-INFINITY, 0xFFFFFFFFu) == 0xFF80,
        "bf16 stochastic store: -Inf stays -Inf");
  check((float_to_bf16_stochastic(NAN, 0xFFFFFFFFu) & 0x7FC0) == 0x7FC0,
        "bf16 stochastic store: NaN stays a quiet NaN");
}

// The element-index hash of the stochastic stores (docs/numerics.md), written out here
// so the kernels' random bits are checked against the definition.
std::uint32_t sr_random_bits(std::uint64_t seed, std::int64_t step, std::uint64_t stream,
                             std::uint32_t which, std::uint64_t index) {
  namespace d = adamcore::detail;
  const std::uint64_t call_key = d::mix64(seed ^ d::mix64(static_cast<std::uint64_t>(step)));
  std::uint32_t x = static_cast<std::uint32_t>(index) +
                    d::sr_buffer_key(call_key, stream, index >> 32, which);
  x ^= x >> 16;
  x *= d::kHashMul1;
  x ^= x >> 15;
  x *= d::kHashMul2;
  return x ^ (x >> 16);
}

// Stochastic rounding on every ISA: a bfloat16 param copy of arbitrary float32 bit
// patterns is the definition's rounding with the definition's random bits, element by
// element; and the 16-bit layouts' Adam steps give the scalar ISA's bits.
void test_stochastic_rounding_on_every_isa() {
  adamcore::StepOptions sr;
  sr.rounding = adamcore::Rounding::stochastic;
  sr.seed = 12345;
  std::mt19937 rng(5);
  std::vector<float> values(50021);
  for (auto& x : values) {
    std::uint32_t b = rng();
    if (rng() % 4 == 0) b = (b & 0xFFFF0000u) | (rng() % 2 ? 0x0000u : 0xFFFFu);
    if (rng() % 8 == 0) b = (b & 0x807FFFFFu) | (rng() % 2 ? 0x7F000000u : 0x00000000u);
    std::memcpy(&x, &b, 4);
  }
  adamcore::AdagradHyper still;  // lr = 0, g = 0: the params stay as they are
  still.lr = 0.0;
  const adamcore::Layout copy_layout{adamcore::DType::float32, adamcore::DType::float32,
                                     adamcore::DType::float32, adamcore::DType::bfloat16};
  const std::int64_t step = 7;
  for (adamcore::Isa isa : supported_isas()) {
    adamcore::set_isa(isa);
    for (std::size_t offset : {0, 3}) {
      std::vector<float> p = values, g(values.size(), 0.0f), s(values.size(), 0.0f);
      std::vector<std::uint16_t> copy(values.size(), 0);
      const std::size_t n = values.size() - offset;
      adamcore::AdagradBuffers b{p.data() + offset, g.data(), s.data(), n, copy.data() + offset};
      b.stream = 77;
      adamcore::adagrad_step(&b, 1, step, still, nullptr, -1.0, copy_layout, sr);
      std::size_t wrong = 0;
      for (std::size_t i = 0; i < n; ++i) {
        const float x = p[offset + i];  // (a signalling NaN param came back quiet)
        const std::uint16_t want = bf16_stochastic_in_two_steps(
            x, sr_random_bits(sr.seed, step, b.stream, adamcore::detail::sr_copy, i));
        wrong += copy[offset + i] != want;
      }
      check(wrong == 0, std::string(adamcore::isa_name(isa)) +
                            ": stochastic bf16 copy is the definition's, offset " +
                            std::to_string(offset) + " (" + std::to_string(wrong) + " differ)");
    }
  }
  using adamcore::DType;
  const std::vector<adamcore::Layout> layouts = {
      {DType::bfloat16, DType::bfloat16, DType::bfloat16, DType::none},
      {DType::float16, DType::float16, DType::float16, DType::none},
      {DType::bfloat16, DType::bfloat16, DType::float32, DType::none},
      {DType::float16, DType::float16, DType::float32, DType::none},
      {DType::float32, DType::float32, DType::bfloat16, DType::none},
      {DType::float32, DType::bfloat16, DType::bfloat16, DType::bfloat16}};
  adamcore::AdamHyper h;
  h.lr = 1e-2;
  h.weight_decay = 0.01;
  for (const adamcore::Layout& layout : layouts) {
    if (!adamcore::check_layout(layout).empty()) {
      check(false, describe(layout) + ": not an accepted layout");
      continue;
    }
    const std::size_t n = 1001, offset = 1, total = n + offset;
    const AdamState start = make_state(rng, total);
    std::vector<Typed> grads;
    for (int t = 0; t < 4; ++t) {
      grads.push_back(encode(make_values(rng, total, true, 1.0f), layout.grad));
    }
    const LayoutState init{encode(start.p, layout.param), encode(start.m, layout.state),
                           encode(start.v, layout.state), encode(start.vmax, layout.state),
                           encode(std::vector<float>(total, NAN), layout.param_copy)};
    const auto run = [&](const adamcore::StepOptions& options) {
      LayoutState s = init;
      for (std::size_t t = 0; t < grads.size(); ++t) {
        adamcore::AdamBuffers b{s.p.at(offset), grads[t].at(offset), s.m.at(offset),
                                s.v.at(offset), nullptr, n, s.copy.at(offset)};
        b.stream = 3;
        adamcore::adam_step(&b, 1, static_cast<std::int64_t>(t + 1), h, nullptr, -1.0, layout,
                            options);
      }
      return s;
    };
    adamcore::set_isa(adamcore::Isa::scalar);
    const LayoutState ref = run(sr);
    const LayoutState nearest = run(adamcore::StepOptions{});
    check(first_mismatch(ref.p, nearest.p) >= 0 || first_mismatch(ref.m, nearest.m) >= 0,
          describe(layout) + ": stochastic rounding differs from nearest");
    for (adamcore::Isa isa : supported_isas()) {
      adamcore::set_isa(isa);
      const LayoutState got = run(sr);
      const std::string what =
          std::string(adamcore::isa_name(isa)) + " stochastic " + describe(layout);
      check(first_mismatch(got.p, ref.p) < 0, what + ": param");
      check(first_mismatch(got.m, ref.m) < 0, what + ": exp_avg");
      check(first_mismatch(got.v, ref.v) < 0, what + ": exp_avg_sq");
      check(first_mismatch(got.copy, ref.copy) < 0, what + ": param_copy");
    }
  }
  adamcore::set_isa(adamcore::best_isa());
}

void test_layout_checks() {
  using adamcore::DType;
  check(!adamcore::check_layout({DType::bfloat16, DType::float32, DType::float32, DType::none}).empty(),
        "bf16 params with float32 grads and state refused");
  check(!adamcore::check_layout({DType::float32, DType::bfloat16, DType::float32, DType::float16}).empty(),
        "a float16 copy with bfloat16 grads refused");
  check(!adamcore::check_layout({DType::float64, DType::float64, DType::float64, DType::bfloat16}).empty(),
        "a copy of float64 params refused");
  check(adamcore::check_layout({DType::float32, DType::float32, DType::float32, DType::float16}).empty(),
        "a float16 copy of float32 params accepted");
  check(adamcore::check_layout({DType::float32, DType::float16, DType::float32, DType::none}).empty(),
        "float16 grads for float32 params accepted");
  check(!adamcore::check_layout({DType::float32, DType::float64, DType::float32, DType::none}).empty(),
        "float64 grads for float32 params refused");
  check(adamcore::check_layout({DType::none}).find("Accepted: one dtype") != std::string::npos,
        "the refusal names the accepted layouts");
}

void test_isa_control() {
  adamcore::Isa isa;
  check(adamcore::isa_from_name("avx2", &isa) && isa == adamcore::Isa::avx2, "parse avx2");
  check(!adamcore::isa_from_name("sse9", &isa), "reject unknown ISA name");
  check(adamcore::isa_supported(adamcore::Isa::scalar), "scalar is always supported");
  check(adamcore::set_isa(adamcore::best_isa()), "best ISA can be selected");
  check(adamcore::active_isa() == adamcore::best_isa(), "active ISA follows set_isa");
  check(adamcore::check_adam_hyper(adamcore::AdamHyper{}, 0).rfind("step", 0) == 0,
        "step 0 rejected, naming step");
  adamcore::AdamHyper bad;
  bad.beta2 = 1.0;
  check(adamcore::check_adam_hyper(bad, 1).rfind("beta2", 0) == 0, "beta2=1 rejected");
}

}  // namespace

// ---------------------------------------------------------------- conventions
// Every non-default recipe (torch fused's scalar tail at widths 8 and 16, DeepSpeed's,
// optax's and Keras's Adam and AdaGrad) gives the scalar ISA's bits on every ISA and
// thread count.
struct ConventionRun {
  adamcore::Convention convention;
  int tail_width;
};
const ConventionRun kConventionRuns[] = {{adamcore::Convention::torch_fused, 8},
                                         {adamcore::Convention::torch_fused, 16},
                                         {adamcore::Convention::deepspeed, 0},
                                         {adamcore::Convention::deepspeed, 8},
                                         {adamcore::Convention::optax, 0},
                                         {adamcore::Convention::keras, 0}};

// adam_variants() that `run` accepts, plus optax's Nesterov and eps_root forms.
std::vector<adamcore::AdamHyper> convention_variants(const ConventionRun& run) {
  std::vector<adamcore::AdamHyper> out;
  for (adamcore::AdamHyper h : adam_variants()) {
    h.convention = run.convention;
    h.tail_width = run.tail_width;
    if (!adamcore::check_adam_hyper(h, 1).empty()) continue;
    out.push_back(h);
    if (run.convention != adamcore::Convention::optax) continue;
    h.eps_root = 1e-10;
    out.push_back(h);
    if (h.amsgrad) continue;
    h.nesterov = true;
    out.push_back(h);
  }
  return out;
}

void test_conventions_isas_and_threads_match_scalar() {
  std::mt19937 rng(4321);
  const std::vector<std::size_t> sizes = {1, 7, 17, 33, 65, 257, 20000 + 13};
  for (const ConventionRun& run : kConventionRuns) {
    const std::vector<adamcore::AdamHyper> hypers = convention_variants(run);
    check(!hypers.empty(), std::string(adamcore::convention_name(run.convention)) + " runs");
    for (const adamcore::AdamHyper& h : hypers) {
      for (std::size_t n : sizes) {
        const std::size_t offset = n % 3;
        const AdamState start = make_state(rng, n + offset);
        std::vector<std::vector<float>> grads;
        for (int t = 0; t < 6; ++t) grads.push_back(make_values(rng, n + offset, true, 1.0f));
        adamcore::set_isa(adamcore::Isa::scalar);
        adamcore::set_num_threads(1);
        const AdamState ref = run_adam(start, grads, offset, n, h);
        for (adamcore::Isa isa : supported_isas()) {
          for (int threads : {1, 3}) {
            adamcore::set_isa(isa);
            adamcore::set_num_threads(threads);
            adamcore::set_parallel_threshold(1024);
            const AdamState got = run_adam(start, grads, offset, n, h);
            const std::string what = std::string(adamcore::isa_name(isa)) + " " +
                                     adamcore::convention_name(run.convention) + " tail " +
                                     std::to_string(run.tail_width) + " " + describe(h) +
                                     " n=" + std::to_string(n) + " threads=" +
                                     std::to_string(threads);
            check(first_mismatch(got.p, ref.p) < 0, what + ": param");
            check(first_mismatch(got.m, ref.m) < 0, what + ": exp_avg");
            check(first_mismatch(got.v, ref.v) < 0, what + ": exp_avg_sq");
            check(first_mismatch(got.vmax, ref.vmax) < 0, what + ": max_exp_avg_sq");
          }
        }
        adamcore::set_num_threads(1);
        adamcore::set_parallel_threshold(std::size_t{1} << 14);
      }
    }
  }
  // DeepSpeed's and Keras's AdaGrad (Keras has no weight decay).
  for (const auto& [convention, wd] :
       {std::pair{adamcore::Convention::deepspeed, 0.0},
        std::pair{adamcore::Convention::deepspeed, 0.01},
        std::pair{adamcore::Convention::keras, 0.0}}) {
    adamcore::AdagradHyper h;
    h.lr = 0.05;
    h.eps = 1e-7;
    h.weight_decay = wd;
    h.convention = convention;
    const std::size_t n = 20000 + 7;
    const auto p0 = make_values(rng, n, false, 1.0f);
    std::vector<std::vector<float>> grads;
    for (int t = 0; t < 6; ++t) grads.push_back(make_values(rng, n, true, 1.0f));
    auto run = [&](adamcore::Isa isa, int threads) {
      adamcore::set_isa(isa);
      adamcore::set_num_threads(threads);
      adamcore::set_parallel_threshold(1024);
      std::vector<float> p = p0, s(n, 0.0f);
      for (std::size_t t = 0; t < grads.size(); ++t) {
        adamcore::AdagradBuffers b{p.data(), grads[t].data(), s.data(), n};
        adamcore::adagrad_step(&b, 1, static_cast<std::int64_t>(t + 1), h);
      }
      p.insert(p.end(), s.begin(), s.end());
      return p;
    };
    const auto ref = run(adamcore::Isa::scalar, 1);
    for (adamcore::Isa isa : supported_isas()) {
      for (int threads : {1, 3}) {
        check(first_mismatch(run(isa, threads), ref) < 0,
              std::string(adamcore::isa_name(isa)) + " " +
                  adamcore::convention_name(convention) + " adagrad threads=" +
                  std::to_string(threads));
      }
    }
    adamcore::set_num_threads(1);
    adamcore::set_parallel_threshold(std::size_t{1} << 14);
  }
}

// DeepSpeed's Step_AVX written out plainly for one element (float32 host scalars).
void plain_deepspeed_adam(float& p, float g, float& m, float& v, std::int64_t t, float lr,
                          float beta1, float beta2, float eps, float wd, bool adamw) {
  float beta1_t = 1.0f, beta2_t = 1.0f;
  for (std::int64_t i = 0; i < t; ++i) {
    beta1_t *= beta1;
    beta2_t *= beta2;
  }
  const float bc1 = 1.0f - beta1_t;
  const float bc2 = 1.0f / std::sqrt(1.0f - beta2_t);
  const float step_size = -lr / bc1;
  if (!adamw) g = std::fma(p, wd, g);
  m = std::fma(g, 1.0f - beta1, m * beta1);
  v = std::fma(g * g, 1.0f - beta2, v * beta2);
  const float update = m / std::fma(std::sqrt(v), bc2, eps);
  if (adamw) p = std::fma(p, -lr * wd, p);
  p = std::fma(update, step_size, p);
}

void test_deepspeed_matches_plain_recipe() {
  std::mt19937 rng(7);
  const std::size_t n = 100;
  for (bool adamw : {false, true}) {
    AdamState s = make_state(rng, n);
    AdamState plain = s;
    adamcore::AdamHyper h;
    h.lr = 3e-3;
    h.beta1 = 0.9;
    h.beta2 = 0.99;
    h.weight_decay = 0.1;
    h.decoupled = adamw;
    h.convention = adamcore::Convention::deepspeed;
    adamcore::set_isa(adamcore::Isa::scalar);
    for (std::int64_t t = 1; t <= 50; ++t) {
      const auto g = make_values(rng, n, false, 1.0f);
      adamcore::AdamBuffers b{s.p.data(), g.data(), s.m.data(), s.v.data(), nullptr, n};
      adamcore::adam_step(&b, 1, t, h);
      for (std::size_t i = 0; i < n; ++i) {
        plain_deepspeed_adam(plain.p[i], g[i], plain.m[i], plain.v[i], t, 3e-3f, 0.9f, 0.99f,
                             1e-8f, 0.1f, adamw);
      }
    }
    const std::string what = std::string("deepspeed vs plain recipe adamw=") + (adamw ? "1" : "0");
    check(first_mismatch(s.p, plain.p) < 0, what + ": param");
    check(first_mismatch(s.m, plain.m) < 0, what + ": exp_avg");
    check(first_mismatch(s.v, plain.v) < 0, what + ": exp_avg_sq");
  }
}

void test_convention_checks() {
  const adamcore::Layout f32;
  adamcore::Layout bf16;
  bf16.param = bf16.grad = bf16.state = adamcore::DType::bfloat16;
  check(adamcore::check_convention(adamcore::Convention::torch_fused, 0, bf16).empty(),
        "torch-fused runs on every layout");
  check(adamcore::check_convention(adamcore::Convention::deepspeed, 0, f32).empty(),
        "deepspeed runs on float32");
  check(adamcore::check_convention(adamcore::Convention::deepspeed, 0, bf16)
                .rfind("convention", 0) == 0,
        "deepspeed on bfloat16 names convention");
  check(adamcore::check_convention(adamcore::Convention::torch_fused, 8, bf16)
                .rfind("convention", 0) == 0,
        "tail_width on bfloat16 is refused");
  check(adamcore::check_convention(adamcore::Convention::torch_fused, 5, f32)
                .rfind("tail_width", 0) == 0,
        "tail_width 5 names tail_width");
  check(adamcore::check_convention(adamcore::Convention::deepspeed, 16, f32).empty(),
        "deepspeed takes a tail_width");
  check(adamcore::check_convention(adamcore::Convention::optax, 0, f32).empty() &&
            adamcore::check_convention(adamcore::Convention::keras, 0, f32).empty(),
        "optax and keras run on float32");
  check(adamcore::check_convention(adamcore::Convention::keras, 8, f32).rfind("tail_width", 0) ==
            0,
        "keras has no tail");
  adamcore::AdamHyper optax_hyper;
  optax_hyper.convention = adamcore::Convention::optax;
  optax_hyper.nesterov = true;
  check(adamcore::check_adam_hyper(optax_hyper, 1).empty(), "optax takes nesterov");
  optax_hyper.amsgrad = true;
  check(adamcore::check_adam_hyper(optax_hyper, 1).rfind("nesterov", 0) == 0,
        "optax nesterov with amsgrad names nesterov");
  optax_hyper.convention = adamcore::Convention::keras;
  check(adamcore::check_adam_hyper(optax_hyper, 1).rfind("nesterov", 0) == 0,
        "nesterov outside optax names nesterov");
  adamcore::AdamHyper keras_l2;
  keras_l2.convention = adamcore::Convention::keras;
  keras_l2.weight_decay = 0.1;
  check(adamcore::check_adam_hyper(keras_l2, 1).rfind("weight_decay", 0) == 0,
        "keras refuses L2 weight decay");
  adamcore::AdagradHyper optax_adagrad;
  optax_adagrad.convention = adamcore::Convention::optax;
  check(adamcore::check_adagrad_hyper(optax_adagrad, 1).rfind("convention", 0) == 0,
        "optax adagrad is refused naming convention");
  check(!adamcore::check_convention(static_cast<adamcore::Convention>(9), 0, f32).empty(),
        "an unknown convention is refused");
  adamcore::Convention c;
  check(adamcore::convention_from_name("deepspeed", &c) && c == adamcore::Convention::deepspeed,
        "convention names parse");
  check(!adamcore::convention_from_name("DeepSpeed", &c), "convention names are exact");
  adamcore::AdamHyper ams;
  ams.amsgrad = true;
  ams.convention = adamcore::Convention::deepspeed;
  check(!adamcore::check_adam_hyper(ams, 1).empty(), "deepspeed amsgrad is refused");
}

int main() {
  std::printf("ISAs supported here:");
  for (adamcore::Isa isa : supported_isas()) std::printf(" %s", adamcore::isa_name(isa));
  std::printf("; threads available: %d\n", adamcore::get_num_threads());
  test_isa_control();
  test_scalar_matches_plain_recipe();
  test_adam_isas_match_scalar();
  test_adagrad_isas_match_scalar();
  test_convention_checks();
  test_deepspeed_matches_plain_recipe();
  test_conventions_isas_and_threads_match_scalar();
  test_layout_checks();
  test_conversions_on_every_isa();
  test_bf16_stochastic_store_is_the_two_step_rounding();
  test_stochastic_rounding_on_every_isa();
  test_layouts_isas_match_scalar();
  test_threads_do_not_change_bits();
  test_concurrent_callers();
  test_floating_point_mode_reaches_helpers();
  test_stall_guard();
  return adamcore_test::report();
}
