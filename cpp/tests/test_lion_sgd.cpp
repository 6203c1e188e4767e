// C++ tests of SGD and Lion, without Python:
//  1. every ISA this CPU runs gives the scalar ISA's bits, for every option combination,
//     each one-dtype layout, many sizes and unaligned starts, over several steps, with
//     special values (zeros, subnormals, huge, NaN and Inf);
//  2. the scalar ISA gives the bits of plainly written float32 recipes (SGD: torch's
//     fused vector body; Lion: the paper's and DeepSpeed's);
//  3. thread counts 1..3 give identical bits;
//  4. found_inf writes nothing, and the layout and hyperparameter checks name the problem.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "adamcore/adamcore.h"
#include "check.h"
#include "kernel_api.h"

// The kernels' scalar 16-bit conversions, to build test buffers.
#define ADAMCORE_NS testconv
#include "vec/vec_scalar.h"
#undef ADAMCORE_NS

namespace {

using adamcore_test::check;

// Raw bytes of one buffer of `n` elements of `dtype`, filled from float values.
struct Raw {
  adamcore::DType dtype;
  std::vector<unsigned char> bytes;
  void* at(std::size_t offset) { return bytes.data() + offset * adamcore::dtype_size(dtype); }
};

Raw make_raw(adamcore::DType dtype, const std::vector<float>& values) {
  Raw r{dtype, std::vector<unsigned char>(values.size() * adamcore::dtype_size(dtype))};
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (dtype == adamcore::DType::float32) {
      std::memcpy(r.at(i), &values[i], 4);
    } else if (dtype == adamcore::DType::float64) {
      const double d = values[i];
      std::memcpy(r.at(i), &d, 8);
    } else if (dtype == adamcore::DType::bfloat16) {
      const std::uint16_t h = adamcore::testconv::float_to_bf16(values[i]);
      std::memcpy(r.at(i), &h, 2);
    } else {
      const std::uint16_t h = adamcore::testconv::float_to_f16(values[i]);
      std::memcpy(r.at(i), &h, 2);
    }
  }
  return r;
}

std::vector<float> make_values(std::mt19937& rng, std::size_t n, float scale) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::uniform_int_distribution<int> pick(0, 39);
  std::vector<float> out(n);
  for (auto& x : out) {
    x = normal(rng);
    switch (pick(rng)) {
      case 0: x = 0.0f; break;
      case 1: x = -0.0f; break;
      case 2: x = 1e-40f; break;
      case 3: x = -3e-39f; break;
      case 4: x = 3e37f; break;
      case 5: x = NAN; break;
      case 6: x = -INFINITY; break;
      default: break;
    }
  }
  return out;
}

// Bitwise equality of two buffers, any NaN equal to any NaN (payloads are not part of
// the contract). Returns the first differing index or -1.
long first_mismatch(const Raw& a, const Raw& b) {
  const std::size_t item = adamcore::dtype_size(a.dtype);
  for (std::size_t i = 0; i < a.bytes.size() / item; ++i) {
    const unsigned char* x = a.bytes.data() + i * item;
    const unsigned char* y = b.bytes.data() + i * item;
    if (std::memcmp(x, y, item) == 0) continue;
    double dx = 0, dy = 0;
    if (a.dtype == adamcore::DType::float32) {
      float fx, fy;
      std::memcpy(&fx, x, 4);
      std::memcpy(&fy, y, 4);
      dx = fx, dy = fy;
    } else if (a.dtype == adamcore::DType::float64) {
      std::memcpy(&dx, x, 8);
      std::memcpy(&dy, y, 8);
    } else {
      std::uint16_t hx, hy;
      std::memcpy(&hx, x, 2);
      std::memcpy(&hy, y, 2);
      const bool bf = a.dtype == adamcore::DType::bfloat16;
      const std::uint16_t exp_mask = bf ? 0x7F80 : 0x7C00, man_mask = bf ? 0x7F : 0x3FF;
      const bool nx = (hx & exp_mask) == exp_mask && (hx & man_mask);
      const bool ny = (hy & exp_mask) == exp_mask && (hy & man_mask);
      if (nx && ny) continue;
      return static_cast<long>(i);
    }
    if (std::isnan(dx) && std::isnan(dy)) continue;
    return static_cast<long>(i);
  }
  return -1;
}

const adamcore::DType kDtypes[] = {adamcore::DType::float32, adamcore::DType::float64,
                                   adamcore::DType::bfloat16, adamcore::DType::float16};

std::vector<adamcore::Isa> supported_isas() {
  std::vector<adamcore::Isa> out;
  for (int i = 0; i < adamcore::kIsaCount; ++i) {
    if (adamcore::isa_supported(static_cast<adamcore::Isa>(i))) out.push_back(static_cast<adamcore::Isa>(i));
  }
  return out;
}

std::vector<adamcore::SgdHyper> sgd_variants() {
  std::vector<adamcore::SgdHyper> out;
  for (double momentum : {0.0, 0.9}) {
    for (double dampening : {0.0, 0.25}) {
      for (double wd : {0.0, 0.01}) {
        for (bool nesterov : {false, true}) {
          for (bool maximize : {false, true}) {
            if (nesterov && (momentum == 0 || dampening != 0)) continue;
            if (momentum == 0 && dampening != 0) continue;
            adamcore::SgdHyper h;
            h.lr = 0.05;
            h.momentum = momentum;
            h.dampening = dampening;
            h.weight_decay = wd;
            h.nesterov = nesterov;
            h.maximize = maximize;
            out.push_back(h);
          }
        }
      }
    }
  }
  return out;
}

std::vector<adamcore::LionHyper> lion_variants() {
  std::vector<adamcore::LionHyper> out;
  for (auto convention : {adamcore::LionConvention::paper, adamcore::LionConvention::deepspeed}) {
    for (double wd : {0.0, 0.1}) {
      for (bool maximize : {false, true}) {
        adamcore::LionHyper h;
        h.lr = 1e-3;
        h.weight_decay = wd;
        h.maximize = maximize;
        h.convention = convention;
        out.push_back(h);
      }
    }
  }
  return out;
}

// Steps tensors of `size` elements starting `offset` elements into their buffers.
struct Run {
  Raw param, grad, state;
};

Run sgd_run(adamcore::Isa isa, int threads, adamcore::DType dtype, const adamcore::SgdHyper& h,
            std::size_t size, std::size_t offset, std::uint32_t seed, int steps) {
  adamcore::set_isa(isa);
  adamcore::set_num_threads(threads);
  std::mt19937 rng(seed);
  Run r{make_raw(dtype, make_values(rng, size + offset, 1.0f)), make_raw(dtype, {}),
        make_raw(dtype, std::vector<float>(size + offset, 0.0f))};
  const adamcore::Layout layout{dtype, dtype, dtype, adamcore::DType::none};
  for (int t = 0; t < steps; ++t) {
    r.grad = make_raw(dtype, make_values(rng, size + offset, 1.0f));
    adamcore::SgdBuffers b{r.param.at(offset), r.grad.at(offset), r.state.at(offset), size};
    adamcore::sgd_step(&b, 1, t == 0, h, layout);
  }
  return r;
}

Run lion_run(adamcore::Isa isa, int threads, adamcore::DType dtype, const adamcore::LionHyper& h,
             std::size_t size, std::size_t offset, std::uint32_t seed, int steps) {
  adamcore::set_isa(isa);
  adamcore::set_num_threads(threads);
  std::mt19937 rng(seed);
  Run r{make_raw(dtype, make_values(rng, size + offset, 1.0f)), make_raw(dtype, {}),
        make_raw(dtype, make_values(rng, size + offset, 0.1f))};
  const adamcore::Layout layout{dtype, dtype, dtype, adamcore::DType::none};
  for (int t = 0; t < steps; ++t) {
    r.grad = make_raw(dtype, make_values(rng, size + offset, 1.0f));
    adamcore::LionBuffers b{r.param.at(offset), r.grad.at(offset), r.state.at(offset), size};
    adamcore::lion_step(&b, 1, h, layout);
  }
  return r;
}

bool same_run(const Run& a, const Run& b) {
  return first_mismatch(a.param, b.param) < 0 && first_mismatch(a.state, b.state) < 0 &&
         first_mismatch(a.grad, b.grad) < 0;
}

// Every supported ISA against the scalar one for one optimizer's hyperparameters:
// run(isa, threads, dtype, hyper, size, offset, seed, steps) returns the buffers.
template <class Hyper, class RunFn>
void compare_isas(const char* name, adamcore::DType dtype, const Hyper& h, int variant,
                  RunFn run) {
  for (std::size_t size : {1, 7, 8, 17, 33, 100, 1000}) {
    for (std::size_t offset : {std::size_t{0}, std::size_t{3}}) {
      const std::uint32_t seed = 7u + static_cast<std::uint32_t>(variant);
      const Run ref = run(adamcore::Isa::scalar, 1, dtype, h, size, offset, seed, 4);
      for (adamcore::Isa isa : supported_isas()) {
        check(same_run(ref, run(isa, 1, dtype, h, size, offset, seed, 4)),
              std::string(name) + " " + adamcore::isa_name(isa) + " " +
                  adamcore::dtype_name(dtype) + " variant " + std::to_string(variant) +
                  " size " + std::to_string(size));
      }
    }
  }
}

void test_isas_and_threads_match_scalar() {
  int variant = 0;
  for (adamcore::DType dtype : kDtypes) {
    for (const auto& h : sgd_variants()) compare_isas("sgd", dtype, h, ++variant, sgd_run);
    for (const auto& h : lion_variants()) {
      ++variant;
      if (dtype == adamcore::DType::float64 && h.convention == adamcore::LionConvention::deepspeed) {
        continue;
      }
      compare_isas("lion", dtype, h, variant, lion_run);
    }
  }
  // Threads: a step large enough to be split.
  adamcore::set_parallel_threshold(64);
  const adamcore::Isa best = adamcore::best_isa();
  for (adamcore::DType dtype : kDtypes) {
    const adamcore::SgdHyper sgd = sgd_variants()[5];
    const Run one = sgd_run(best, 1, dtype, sgd, 70001, 1, 99, 3);
    for (int threads : {2, 3}) {
      check(same_run(one, sgd_run(best, threads, dtype, sgd, 70001, 1, 99, 3)),
            std::string("sgd threads ") + std::to_string(threads) + " " + adamcore::dtype_name(dtype));
    }
    adamcore::LionHyper lion = lion_variants()[2];
    const Run lion_one = lion_run(best, 1, dtype, lion, 70001, 1, 98, 3);
    for (int threads : {2, 3}) {
      check(same_run(lion_one, lion_run(best, threads, dtype, lion, 70001, 1, 98, 3)),
            std::string("lion threads ") + std::to_string(threads) + " " + adamcore::dtype_name(dtype));
    }
  }
  adamcore::set_parallel_threshold(std::size_t{1} << 14);
  adamcore::set_num_threads(1);
}

float as_float(const Raw& r, std::size_t i) {
  float x;
  std::memcpy(&x, r.bytes.data() + 4 * i, 4);
  return x;
}

float sign_paper(float x) { return x > 0 ? 1.0f : x < 0 ? -1.0f : x; }  // NaN and zeros kept

// The scalar ISA against plainly written float32 recipes, two steps (the first SGD step
// sets the momentum buffer).
void test_scalar_matches_plain_recipes() {
  adamcore::set_isa(adamcore::Isa::scalar);
  adamcore::set_num_threads(1);
  const adamcore::DType f32 = adamcore::DType::float32;
  for (const auto& h : sgd_variants()) {
    const Run got = sgd_run(adamcore::Isa::scalar, 1, f32, h, 50, 0, 5, 2);
    std::mt19937 rng(5);
    std::vector<float> p = make_values(rng, 50, 1.0f), m(50, 0.0f);
    for (int t = 0; t < 2; ++t) {
      const std::vector<float> grads = make_values(rng, 50, 1.0f);
      for (std::size_t i = 0; i < 50; ++i) {
        float g = h.maximize ? -grads[i] : grads[i];
        if (h.weight_decay != 0) g = std::fma(p[i], static_cast<float>(h.weight_decay), g);
        if (h.momentum != 0) {
          m[i] = t == 0 ? g : std::fma(static_cast<float>(1.0 - h.dampening), g,
                                       m[i] * static_cast<float>(h.momentum));
          g = h.nesterov ? std::fma(m[i], static_cast<float>(h.momentum), g) : m[i];
        }
        p[i] = std::fma(g, static_cast<float>(-h.lr), p[i]);
      }
    }
    bool ok = true;
    for (std::size_t i = 0; i < 50; ++i) {
      const float a = as_float(got.param, i);
      ok = ok && ((std::isnan(a) && std::isnan(p[i])) || std::memcmp(&a, &p[i], 4) == 0);
    }
    check(ok, "sgd scalar matches the plain recipe");
  }
  for (const auto& h : lion_variants()) {
    const Run got = lion_run(adamcore::Isa::scalar, 1, f32, h, 50, 0, 6, 2);
    std::mt19937 rng(6);
    std::vector<float> p = make_values(rng, 50, 1.0f), m = make_values(rng, 50, 0.1f);
    const bool ds = h.convention == adamcore::LionConvention::deepspeed;
    const float b1 = static_cast<float>(h.beta1), b2 = static_cast<float>(h.beta2);
    const float c1 = ds ? 1.0f - b1 : static_cast<float>(1.0 - h.beta1);
    const float c2 = ds ? 1.0f - b2 : static_cast<float>(1.0 - h.beta2);
    const float lr = static_cast<float>(h.lr);
    const float decay = ds ? 1.0f - lr * static_cast<float>(h.weight_decay)
                           : static_cast<float>(1.0 - h.lr * h.weight_decay);
    for (int t = 0; t < 2; ++t) {
      const std::vector<float> grads = make_values(rng, 50, 1.0f);
      for (std::size_t i = 0; i < 50; ++i) {
        const float g = h.maximize ? -grads[i] : grads[i];
        if (ds) {
          const float c = std::fma(g, c1, m[i] * b1);
          const float u = -std::copysign(lr, c);
          p[i] = h.weight_decay > 0 ? std::fma(p[i], decay, u) : p[i] + u;
          m[i] = std::fma(g, c2, m[i] * b2);
        } else {
          const float c = b1 * m[i] + c1 * g;
          if (h.weight_decay > 0) p[i] = p[i] * decay;
          p[i] = p[i] - lr * sign_paper(c);
          m[i] = b2 * m[i] + c2 * g;
        }
      }
    }
    bool ok = true;
    for (std::size_t i = 0; i < 50; ++i) {
      const float a = as_float(got.param, i), s = as_float(got.state, i);
      ok = ok && ((std::isnan(a) && std::isnan(p[i])) || std::memcmp(&a, &p[i], 4) == 0);
      ok = ok && ((std::isnan(s) && std::isnan(m[i])) || std::memcmp(&s, &m[i], 4) == 0);
    }
    check(ok, std::string("lion scalar matches the plain recipe, ") + (ds ? "deepspeed" : "paper"));
  }
}

void test_found_inf_and_checks() {
  std::vector<float> p(10, 1.0f), g(10, 1.0f), m(10, 2.0f);
  adamcore::StepOptions skip;
  skip.found_inf = true;
  adamcore::SgdHyper sgd;
  sgd.momentum = 0.9;
  adamcore::SgdBuffers sb{p.data(), g.data(), m.data(), p.size()};
  adamcore::sgd_step(&sb, 1, false, sgd, adamcore::Layout{}, skip);
  adamcore::LionBuffers lb{p.data(), g.data(), m.data(), p.size()};
  adamcore::lion_step(&lb, 1, adamcore::LionHyper{}, adamcore::Layout{}, skip);
  check(p == std::vector<float>(10, 1.0f) && m == std::vector<float>(10, 2.0f),
        "found_inf writes nothing");

  sgd.nesterov = true;
  sgd.dampening = 0.5;
  check(adamcore::check_sgd_hyper(sgd).rfind("nesterov", 0) == 0, "nesterov with dampening refused");
  adamcore::LionHyper lion;
  lion.beta2 = 1.5;
  check(adamcore::check_lion_hyper(lion).rfind("beta2", 0) == 0, "lion beta2 named");
  const adamcore::Layout mixed{adamcore::DType::float32, adamcore::DType::bfloat16,
                               adamcore::DType::float32, adamcore::DType::none};
  check(!adamcore::check_sgd_layout(mixed).empty(), "sgd refuses mixed layouts");
  const adamcore::Layout f64{adamcore::DType::float64, adamcore::DType::float64,
                             adamcore::DType::float64, adamcore::DType::none};
  check(adamcore::check_lion_layout(f64, adamcore::LionConvention::paper).empty(), "lion float64");
  check(!adamcore::check_lion_layout(f64, adamcore::LionConvention::deepspeed).empty(),
        "lion deepspeed refuses float64");
}

}  // namespace

int main() {
  test_isas_and_threads_match_scalar();
  test_scalar_matches_plain_recipes();
  test_found_inf_and_checks();
  return adamcore_test::report();
}
