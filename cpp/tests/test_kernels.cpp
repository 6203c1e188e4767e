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
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#include "adamcore/adamcore.h"
#include "team.h"

namespace {

int g_failures = 0;
int g_checks = 0;

void check(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    if (g_failures <= 20) std::printf("FAIL: %s\n", what.c_str());
  }
}

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

int main() {
  std::printf("ISAs supported here:");
  for (adamcore::Isa isa : supported_isas()) std::printf(" %s", adamcore::isa_name(isa));
  std::printf("; threads available: %d\n", adamcore::get_num_threads());
  test_isa_control();
  test_scalar_matches_plain_recipe();
  test_adam_isas_match_scalar();
  test_adagrad_isas_match_scalar();
  test_threads_do_not_change_bits();
  test_concurrent_callers();
  test_floating_point_mode_reaches_helpers();
  test_stall_guard();
  std::printf("%d checks, %d failed\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
