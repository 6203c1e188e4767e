// Chooses the kernels, computes the per-step constants once in double, splits the
// elements of one or many tensors across threads, and merges diagnostics.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <thread>

#if defined(ADAMCORE_HAVE_OPENMP)
#include <omp.h>
#endif

#include "adamcore/adamcore.h"
#include "cpu_features.h"
#include "isa_table.h"
#include "kernel_api.h"
#include "team.h"

// The scalar 16-bit conversions, for host constants (compiled without ISA flags).
#define ADAMCORE_NS host
#include "vec/vec_scalar.h"
#undef ADAMCORE_NS

namespace adamcore {

// ---------------------------------------------------------------- ISA control
namespace {

// -1 until first use; then the active Isa's integer value.
std::atomic<int> g_active_isa{-1};

}  // namespace

const char* isa_name(Isa isa) {
  const int i = static_cast<int>(isa);
  return i >= 0 && i < kIsaCount ? detail::kIsaRows[i].name : "unknown";
}

bool isa_from_name(const std::string& name, Isa* out) {
  for (const detail::IsaRow& row : detail::kIsaRows) {
    if (name == row.name) {
      *out = row.isa;
      return true;
    }
  }
  return false;
}

std::string isa_choices() {
  std::string out;
  for (const detail::IsaRow& row : detail::kIsaRows) out += (out.empty() ? "" : ", ") + std::string(row.name);
  return out;
}

bool isa_compiled(Isa isa) {
  const int i = static_cast<int>(isa);
  return i >= 0 && i < kIsaCount && detail::kIsaRows[i].cpu_can_run != nullptr;
}

bool isa_supported(Isa isa) { return isa_compiled(isa) && detail::isa_row(isa).cpu_can_run(); }

Isa best_isa() {
  // On AMD family 19h the AVX2 kernels beat AVX-512 (measured: Adam at 4K 1.71 vs 2.64 us,
  // at 1M 434 vs 527 us, bench/bench_kernels on a Zen 4 EPYC); the bits are the same.
  if (detail::cpu_prefers_avx2_over_avx512() && isa_supported(Isa::avx2)) return Isa::avx2;
  for (Isa isa : {Isa::avx512, Isa::avx2, Isa::neon}) {
    if (isa_supported(isa)) return isa;
  }
  return Isa::scalar;
}

Isa active_isa() {
  int current = g_active_isa.load(std::memory_order_relaxed);
  if (current < 0) {
    current = static_cast<int>(best_isa());
    int expected = -1;
    g_active_isa.compare_exchange_strong(expected, current);
    current = g_active_isa.load(std::memory_order_relaxed);
  }
  return static_cast<Isa>(current);
}

bool set_isa(Isa isa) {
  if (!isa_supported(isa)) return false;
  g_active_isa.store(static_cast<int>(isa), std::memory_order_relaxed);
  return true;
}

namespace {

detail::AdamRangeFn adam_kernel_for(Isa isa, std::size_t layout, detail::WdMode wd,
                                    bool lerp_low, bool ams, bool diag, detail::Recipe recipe) {
  return detail::isa_row(isa).adam(layout, wd, lerp_low, ams, diag, recipe);
}

detail::AdagradRangeFn adagrad_kernel_for(Isa isa, std::size_t layout, bool wd, bool diag,
                                          detail::Recipe recipe) {
  return detail::isa_row(isa).adagrad(layout, wd, diag, recipe);
}

}  // namespace

// ---------------------------------------------------------------- buffer layouts
const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::none: return "none";
    case DType::float32: return "float32";
    case DType::float64: return "float64";
    case DType::bfloat16: return "bfloat16";
    case DType::float16: return "float16";
  }
  return "unknown";
}

std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::float32: return 4;
    case DType::float64: return 8;
    case DType::bfloat16:
    case DType::float16: return 2;
    default: return 0;
  }
}

namespace {

bool same_layout(const Layout& a, const Layout& b) {
  return a.param == b.param && a.grad == b.grad && a.state == b.state &&
         a.param_copy == b.param_copy;
}

// kLayouts' index of `layout`, or kLayoutCount when it is not there.
std::size_t layout_index(const Layout& layout) {
  std::size_t i = 0;
  while (i < detail::kLayoutCount && !same_layout(detail::kLayouts[i], layout)) ++i;
  return i;
}

}  // namespace

std::string check_layout(const Layout& layout) {
  if (layout_index(layout) < detail::kLayoutCount) return {};
  std::ostringstream out;
  out << "unsupported dtypes: params " << dtype_name(layout.param) << ", grads "
      << dtype_name(layout.grad) << ", state " << dtype_name(layout.state) << ", param_copy "
      << dtype_name(layout.param_copy)
      << ". Accepted: one dtype for params, grads and state (float32, float64, bfloat16 or "
         "float16) and no param_copy; float32 params and state with bfloat16 or float16 "
         "grads, optionally with a param_copy of the grads' dtype; float32 params, grads "
         "and state with a bfloat16 or float16 param_copy; bfloat16 or float16 params and "
         "grads with float32 state; float32 params with bfloat16 state, float32 or bfloat16 "
         "grads and optionally a bfloat16 param_copy";
  return out.str();
}

namespace {

// 16-bit host constants, rounded as torch's 16-bit AdaGrad rounds them: to float32,
// then to the param's dtype (and back to float32, exactly).
float round_through(DType dtype, float x) {
  if (dtype == DType::bfloat16) return host::bf16_to_float(host::float_to_bf16(x));
  if (dtype == DType::float16) return host::f16_to_float(host::float_to_f16(x));
  return x;
}

}  // namespace

// ---------------------------------------------------------------- conventions
namespace {

constexpr const char* kConventionNames[kConventionCount] = {"torch-fused", "deepspeed", "optax",
                                                            "keras"};

bool convention_implemented(Convention c) {
  return c == Convention::torch_fused || c == Convention::deepspeed ||
         c == Convention::optax || c == Convention::keras;
}

bool valid_convention(Convention c) {
  const int i = static_cast<int>(c);
  return i >= 0 && i < kConventionCount;
}

// "torch-fused, deepspeed": the names a step accepts, for error messages.
std::string implemented_conventions() {
  std::string out;
  for (int i = 0; i < kConventionCount; ++i) {
    if (!convention_implemented(static_cast<Convention>(i))) continue;
    out += (out.empty() ? "" : ", ") + std::string(kConventionNames[i]);
  }
  return out;
}

// The element recipe of a convention's vector body and of its scalar tail.
detail::Recipe body_recipe(Convention c, bool nesterov = false) {
  switch (c) {
    case Convention::deepspeed:
      return detail::Recipe::deepspeed;
    case Convention::optax:
      return nesterov ? detail::Recipe::optax_nesterov : detail::Recipe::optax;
    case Convention::keras:
      return detail::Recipe::keras;
    default:
      return detail::Recipe::torch_body;
  }
}
detail::Recipe tail_recipe(Convention c) {
  return c == Convention::deepspeed ? detail::Recipe::deepspeed_tail : detail::Recipe::torch_tail;
}

}  // namespace

const char* convention_name(Convention c) {
  return valid_convention(c) ? kConventionNames[static_cast<int>(c)] : "unknown";
}

bool convention_from_name(const std::string& name, Convention* out) {
  for (int i = 0; i < kConventionCount; ++i) {
    if (name == kConventionNames[i]) {
      *out = static_cast<Convention>(i);
      return true;
    }
  }
  return false;
}

std::string check_convention(Convention c, int tail_width, const Layout& layout) {
  if (!valid_convention(c) || !convention_implemented(c)) {
    return std::string("convention must be one of ") + implemented_conventions() + ", got '" +
           convention_name(c) + "'" +
           (valid_convention(c) ? " (its recipe is not implemented in the kernels yet)" : "");
  }
  if (tail_width != 0 && tail_width != 8 && tail_width != 16) {
    return "tail_width must be 0, 8 or 16 (the peer's float32 vector width), got " +
           std::to_string(tail_width);
  }
  if (tail_width != 0 && c != Convention::torch_fused && c != Convention::deepspeed) {
    return std::string("tail_width applies to convention='torch-fused' or 'deepspeed' only, "
                       "not '") + convention_name(c) + "'";
  }
  if ((c != Convention::torch_fused || tail_width != 0) &&
      !same_layout(layout, detail::kLayouts[0])) {
    return std::string("convention='") + convention_name(c) + "'" +
           (tail_width != 0 ? " with tail_width" : "") +
           " needs float32 params, grads and state and no param_copy; got params " +
           dtype_name(layout.param) + ", grads " + dtype_name(layout.grad) + ", state " +
           dtype_name(layout.state) + ", param_copy " + dtype_name(layout.param_copy);
  }
  return {};
}

// ---------------------------------------------------------------- threads
namespace {

std::atomic<int> g_num_threads{0};  // 0 until first use
// Two threads pay off from about 16K elements (Adam: 0.9x at 4K, 1.3x at 16K, 1.8x at
// 64K, measured with a free second core; BENCHMARKS.md).
std::atomic<std::size_t> g_parallel_threshold{std::size_t{1} << 14};

int default_num_threads() {
#if defined(ADAMCORE_HAVE_OPENMP)
  return std::max(1, std::min(omp_get_max_threads(), kMaxThreads));  // honours OMP_NUM_THREADS
#else
  const unsigned n = std::thread::hardware_concurrency();
  return std::max(1, std::min(static_cast<int>(n), kMaxThreads));
#endif
}

}  // namespace

bool built_with_openmp() {
#if defined(ADAMCORE_HAVE_OPENMP)
  return true;
#else
  return false;
#endif
}

int get_num_threads() {
  int n = g_num_threads.load(std::memory_order_relaxed);
  if (n == 0) {
    int expected = 0;
    g_num_threads.compare_exchange_strong(expected, default_num_threads());
    n = g_num_threads.load(std::memory_order_relaxed);
  }
  return n;
}

void set_num_threads(int n) {
  g_num_threads.store(std::max(1, std::min(n, kMaxThreads)), std::memory_order_relaxed);
}

std::size_t get_parallel_threshold() { return g_parallel_threshold.load(); }
void set_parallel_threshold(std::size_t elements) { g_parallel_threshold.store(elements); }

ThreadingStatus threading_status() {
  ThreadingStatus s;
  s.requested = get_num_threads();
  s.forked_child = detail::in_forked_child();
  s.solo_steps_left = detail::solo_steps_left();
  s.stalls = detail::stall_count();
  return s;
}

// ---------------------------------------------------------------- validation
namespace {

std::string bad(const char* name, double value, const char* rule) {
  std::ostringstream out;
  out.precision(17);
  out << name << " must be " << rule << ", got " << value;
  return out.str();
}

std::string check_common(double lr, double eps, double weight_decay, std::int64_t step) {
  if (step < 1) {
    return "step must be an integer >= 1 (the step number after incrementing), got " +
           std::to_string(step);
  }
  if (!std::isfinite(lr) || lr < 0) return bad("lr", lr, "finite and >= 0");
  if (!std::isfinite(eps) || eps < 0) return bad("eps", eps, "finite and >= 0");
  if (!std::isfinite(weight_decay) || weight_decay < 0) {
    return bad("weight_decay", weight_decay, "finite and >= 0");
  }
  return {};
}

}  // namespace

std::string check_adam_hyper(const AdamHyper& h, std::int64_t step) {
  std::string err = check_common(h.lr, h.eps, h.weight_decay, step);
  if (!err.empty()) return err;
  if (h.convention == Convention::deepspeed && h.amsgrad) {
    return "convention='deepspeed' has no amsgrad (DeepSpeedCPUAdam does not implement it)";
  }
  if (!std::isfinite(h.eps_root) || h.eps_root < 0) {
    return bad("eps_root", h.eps_root, "finite and >= 0");
  }
  const bool optax = h.convention == Convention::optax;
  if (!optax && (h.eps_root != 0 || h.nesterov)) {
    return std::string(h.nesterov ? "nesterov" : "eps_root") +
           " applies to convention='optax' only, not '" + convention_name(h.convention) + "'";
  }
  if (h.nesterov && h.amsgrad) {
    return "nesterov must be False with amsgrad (optax.amsgrad has no Nesterov form)";
  }
  if (optax || h.convention == Convention::keras) {
    const std::string peer = std::string(" with convention='") + convention_name(h.convention) +
                             "' (the peer has no such option)";
    if (h.maximize) return "maximize must be False" + peer;
    if (!h.bias_correction) return "bias_correction must be True" + peer;
    if (h.weight_decay != 0 && !h.decoupled) {
      return bad("weight_decay", h.weight_decay,
                 ("0 in adam_step" + peer + "; its weight decay is decoupled: use adamw_step")
                     .c_str());
    }
  }
  if (!std::isfinite(h.beta1) || h.beta1 < 0 || h.beta1 >= 1) {
    return bad("beta1", h.beta1, "in [0, 1)");
  }
  if (!std::isfinite(h.beta2) || h.beta2 < 0 || h.beta2 >= 1) {
    return bad("beta2", h.beta2, "in [0, 1)");
  }
  return {};
}

std::string check_adagrad_hyper(const AdagradHyper& h, std::int64_t step) {
  std::string err = check_common(h.lr, h.eps, h.weight_decay, step);
  if (!err.empty()) return err;
  if (!std::isfinite(h.lr_decay) || h.lr_decay < 0) {
    return bad("lr_decay", h.lr_decay, "finite and >= 0");
  }
  if (h.convention == Convention::deepspeed && h.lr_decay != 0) {
    return bad("lr_decay", h.lr_decay,
               "0 with convention='deepspeed' (DeepSpeedCPUAdagrad has no lr_decay)");
  }
  if (h.convention == Convention::optax) {
    // optax.adagrad's update is rsqrt(s + eps) * g and XLA's rsqrt is not correctly
    // rounded (up to 2 ulp measured), so no IEEE recipe reproduces it.
    return "convention='optax' has no AdaGrad recipe: optax.adagrad uses XLA's rsqrt, which "
           "is not correctly rounded, so its bits cannot be reproduced exactly";
  }
  if (h.convention == Convention::keras) {
    const char* rule = "0 with convention='keras' (keras.optimizers.Adagrad has no such option)";
    if (h.lr_decay != 0) return bad("lr_decay", h.lr_decay, rule);
    if (h.weight_decay != 0) return bad("weight_decay", h.weight_decay, rule);
    if (h.maximize) return "maximize must be False with convention='keras' (no such option)";
  }
  return {};
}

std::string check_step_options(const StepOptions& o) {
  if (o.grad_scale != 0.0f && !(std::isfinite(o.grad_scale) && o.grad_scale > 0.0f)) {
    return bad("grad_scale", o.grad_scale, "finite and > 0 (a float32)");
  }
  if (!(std::isfinite(o.clip_coef) && o.clip_coef >= 0.0)) {
    return bad("clip_coef", o.clip_coef, "finite and >= 0");
  }
  if (o.rounding != Rounding::nearest && o.rounding != Rounding::stochastic) {
    return "rounding must be nearest or stochastic";
  }
  return {};
}

namespace {

// The per-call options every kernel sees.
detail::PassOptions pass_options(const StepOptions& o, std::int64_t step) {
  detail::PassOptions pass{};
  pass.unscale = o.grad_scale != 0.0f;
  pass.clip = o.clip_coef != 1.0;
  pass.stochastic = o.rounding == Rounding::stochastic;
  pass.key = detail::mix64(o.seed ^ detail::mix64(static_cast<std::uint64_t>(step)));
  return pass;
}

}  // namespace

// ---------------------------------------------------------------- diagnostics
namespace detail {

void diag_init(DiagAccum* acc) {
  acc->negative = 0;
  acc->undefined = 0;
  acc->gamma_min = std::numeric_limits<float>::infinity();
  acc->lr_min = std::numeric_limits<float>::infinity();
  acc->lr_max = -std::numeric_limits<float>::infinity();
}

// Values are NaN-free and zeros are +0 (see DiagLanes), so these are order-independent.
void diag_merge(DiagAccum* into, const DiagAccum& from) {
  into->negative += from.negative;
  into->undefined += from.undefined;
  if (from.gamma_min < into->gamma_min) into->gamma_min = from.gamma_min;
  if (from.lr_min < into->lr_min) into->lr_min = from.lr_min;
  if (from.lr_max > into->lr_max) into->lr_max = from.lr_max;
}

}  // namespace detail

// ---------------------------------------------------------------- the parallel loop
namespace {

// Part boundaries inside a tensor fall on multiples of this many elements: whole cache
// lines per part. (The bits do not depend on the split in any case: the head and tail
// of a range run the same arithmetic as the vector body.)
constexpr std::size_t kChunkAlign = 64;

struct Cut {
  std::size_t tensor;
  std::size_t offset;
};

// Calls fn(tensor_index, begin, end, accum) over every element of `total` in all
// tensors. A large step is cut into parts, a few per thread, that the threads of the
// team claim one at a time (detail::run_parts): every part runs exactly once whatever
// number of threads the runtime grants, and a thread that starts late or is
// preempted leaves the unclaimed parts to the others.
template <class Buffers, class Fn>
void for_all_elements(const Buffers* tensors, std::size_t count, std::size_t total,
                      detail::DiagAccum* diag, Fn fn) {
  if (total == 0) return;
  const auto size_of = [tensors](std::size_t t) { return tensors[t].size; };

  int threads = get_num_threads();
  const std::size_t threshold = std::max<std::size_t>(get_parallel_threshold(), kChunkAlign);
  // (total + threshold - 1) / threshold overflows for a huge threshold; this does not.
  const std::size_t worth = total / threshold + (total % threshold != 0 ? 1 : 0);
  if (worth < 2) threads = 1;
  threads = static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(threads), worth));

  if (threads <= 1) {
    for (std::size_t t = 0; t < count; ++t) fn(t, 0, size_of(t), diag);
    return;
  }

  // About eight parts per thread, each 4K..64K elements: small enough that a late or
  // preempted thread holds little back, large enough that claiming one costs nothing.
  const std::size_t per_part = std::min<std::size_t>(
      std::max<std::size_t>(total / (static_cast<std::size_t>(threads) * 8), 4096), 65536);
  const std::size_t parts = total / per_part + (total % per_part != 0 ? 1 : 0);

  // Cut k (0..parts) = position k*total/parts, rounded down inside its tensor.
  std::vector<Cut> cuts(parts + 1);
  {
    std::size_t tensor = 0, before = 0;  // elements in tensors [0, tensor)
    for (std::size_t k = 0; k <= parts; ++k) {
      const std::size_t pos = static_cast<std::size_t>(
          (static_cast<unsigned __int128>(total) * k) / parts);
      while (tensor < count && before + size_of(tensor) <= pos && pos < total) {
        before += size_of(tensor);
        ++tensor;
      }
      if (pos >= total) {
        cuts[k] = {count, 0};
      } else {
        cuts[k] = {tensor, (pos - before) / kChunkAlign * kChunkAlign};
      }
    }
  }

  // One accumulator per team member (the runtime may grant fewer than asked).
  std::vector<detail::DiagAccum> accums(static_cast<std::size_t>(threads));
  for (auto& a : accums) detail::diag_init(&a);

  const auto run_part = [&](std::size_t k, int member) {
    const Cut from = cuts[k];
    const Cut to = cuts[k + 1];
    detail::DiagAccum* acc = diag ? &accums[static_cast<std::size_t>(member)] : nullptr;
    for (std::size_t t = from.tensor; t < count && t <= to.tensor; ++t) {
      const std::size_t begin = t == from.tensor ? from.offset : 0;
      const std::size_t end = t == to.tensor ? to.offset : size_of(t);
      if (begin < end) fn(t, begin, end, acc);
    }
  };
  detail::run_parts(parts, threads, detail::PartFn(run_part));
  if (diag) {
    for (const auto& a : accums) detail::diag_merge(diag, a);
  }
}

void write_stats(const detail::DiagAccum& acc, std::size_t total, bool defined,
                 GammaStats* out) {
  out->defined = defined;
  out->count = static_cast<std::int64_t>(total);
  out->negative = acc.negative;
  out->undefined = acc.undefined;
  out->gamma_min = defined ? acc.gamma_min : std::numeric_limits<float>::quiet_NaN();
  out->lr_min = acc.lr_min;
  out->lr_max = acc.lr_max;
}

// Runs `kernel` over every element of every tensor; fills `diag` if asked. With
// tail_width W > 0, each tensor's last size % W elements run `tail_kernel` instead (torch
// cuts its fused step at multiples of a cache line, 16 floats, and each piece runs W-wide
// vectors then a scalar loop, so only the tensor's last size % W elements take that loop;
// DeepSpeed rounds each tensor down to its vector width and loops over the rest).
template <class Kernel, class Scalars, class Buffers>
void run_kernel(Kernel kernel, const Scalars& k, const Buffers* tensors, std::size_t count,
                GammaStats* diag, Kernel tail_kernel = nullptr, std::size_t tail_width = 0) {
  detail::DiagAccum acc;
  detail::diag_init(&acc);
  std::size_t total = 0;
  for (std::size_t t = 0; t < count; ++t) total += tensors[t].size;
  for_all_elements(tensors, count, total, diag ? &acc : nullptr,
                   [&](std::size_t t, std::size_t begin, std::size_t end, detail::DiagAccum* a) {
                     const std::size_t size = tensors[t].size;
                     const std::size_t tail_at = tail_width ? size - size % tail_width : size;
                     if (begin < tail_at) kernel(k, tensors[t], begin, std::min(end, tail_at), a);
                     if (end > tail_at) {
                       tail_kernel(k, tensors[t], std::max(begin, tail_at), end, a);
                     }
                   });
  if (diag) write_stats(acc, total, k.gamma_defined, diag);
}

// Adam's step size and sqrt of the second bias correction for step t (t >= 1).
void adam_step_size(const AdamHyper& h, double lr, std::int64_t t, double* step_size,
                    double* bc2_sqrt) {
  if (!h.bias_correction) {
    *step_size = lr;
    *bc2_sqrt = 1.0;
    return;
  }
  const double bc1 = 1.0 - std::pow(h.beta1, static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(h.beta2, static_cast<double>(t));
  *step_size = lr / bc1;
  *bc2_sqrt = std::sqrt(bc2);
}

// Adam's constants in double (the float64 layout's); the float32 ones round each once,
// except W - 1, which torch's float32 lerp computes in float32.
void adam_coeffs(const AdamHyper& h, std::int64_t step, double prev_lr,
                 detail::AdamScalars* k) {
  detail::AdamCoeffs<double>& d = k->d;
  double step_size = 0, bc2_sqrt = 0;
  adam_step_size(h, h.lr, step, &step_size, &bc2_sqrt);
  d.one_minus_beta1 = 1.0 - h.beta1;
  d.one_minus_beta1_less1 = d.one_minus_beta1 - 1.0;
  d.beta2 = h.beta2;
  d.one_minus_beta2 = 1.0 - h.beta2;
  d.bc2_sqrt = bc2_sqrt;
  d.eps = h.eps;
  d.neg_step_size = -step_size;
  d.weight_decay = h.weight_decay;
  // torch's kernels are compiled with contraction: 1 - lr*wd is one fused multiply-add.
  d.decay_factor = std::fma(-h.lr, h.weight_decay, 1.0);
  d.step_size = step_size;
  d.prev_step_size = 1.0;
  d.prev_bc2_sqrt = 1.0;
  if (step > 1) {
    adam_step_size(h, prev_lr < 0 ? h.lr : prev_lr, step - 1, &d.prev_step_size,
                   &d.prev_bc2_sqrt);
  }
  detail::AdamCoeffs<float>& f = k->f;
  f.one_minus_beta1 = static_cast<float>(d.one_minus_beta1);
  f.one_minus_beta1_less1 = f.one_minus_beta1 - 1.0f;
  f.beta2 = static_cast<float>(d.beta2);
  f.one_minus_beta2 = static_cast<float>(d.one_minus_beta2);
  f.bc2_sqrt = static_cast<float>(d.bc2_sqrt);
  f.eps = static_cast<float>(d.eps);
  f.neg_step_size = static_cast<float>(d.neg_step_size);
  f.weight_decay = static_cast<float>(d.weight_decay);
  f.decay_factor = static_cast<float>(d.decay_factor);
  f.step_size = static_cast<float>(d.step_size);
  f.prev_step_size = static_cast<float>(d.prev_step_size);
  f.prev_bc2_sqrt = static_cast<float>(d.prev_bc2_sqrt);
  f.beta1 = static_cast<float>(h.beta1);
}

// DeepSpeedCPUAdam's constants (its IncrementStep and update_state), all float32: beta^t
// by one multiplication per step from 1 (so they depend on the step count, as in a run
// that calls it once per step), the reciprocal of sqrt(1 - beta2^t), step size -lr/bc1
// and AdamW's factor -lr*wd. Fields: W = 1-b1, B1, B2, C2 = 1-b2, D = 1/sqrt(bc2), E,
// S = -lr/bc1, L = wd, K = -lr*wd. Γ: a = lr/bc1, and a and D of step t-1 (prev_lr).
void deepspeed_bias_corrections(const AdamHyper& h, std::int64_t step, float* bc1,
                                float* bc2_rsqrt) {
  const float beta1 = static_cast<float>(h.beta1);
  const float beta2 = static_cast<float>(h.beta2);
  float beta1_t = 1.0f, beta2_t = 1.0f;
  for (std::int64_t t = 0; t < step; ++t) {
    beta1_t *= beta1;
    beta2_t *= beta2;
  }
  *bc1 = 1.0f;
  *bc2_rsqrt = 1.0f;
  if (h.bias_correction) {
    *bc1 = 1.0f - beta1_t;
    *bc2_rsqrt = 1.0f / std::sqrt(1.0f - beta2_t);
  }
}

void deepspeed_adam_coeffs(const AdamHyper& h, std::int64_t step, double prev_lr,
                           detail::AdamCoeffs<float>* f) {
  const float beta1 = static_cast<float>(h.beta1);
  const float beta2 = static_cast<float>(h.beta2);
  const float lr = static_cast<float>(h.lr);
  float bc1 = 1.0f, bc2_rsqrt = 1.0f;
  deepspeed_bias_corrections(h, step, &bc1, &bc2_rsqrt);
  f->one_minus_beta1 = 1.0f - beta1;
  f->beta1 = beta1;
  f->beta2 = beta2;
  f->one_minus_beta2 = 1.0f - beta2;
  f->bc2_sqrt = bc2_rsqrt;
  f->eps = static_cast<float>(h.eps);
  f->neg_step_size = -lr / bc1;
  f->weight_decay = static_cast<float>(h.weight_decay);
  f->decay_factor = -lr * static_cast<float>(h.weight_decay);
  f->step_size = lr / bc1;
  f->prev_step_size = 1.0f;
  f->prev_bc2_sqrt = 1.0f;  // (Γ's den of step t-1 uses its 1/sqrt(bc2))
  if (step > 1) {
    float prev_bc1 = 1.0f;
    deepspeed_bias_corrections(h, step - 1, &prev_bc1, &f->prev_bc2_sqrt);
    f->prev_step_size = static_cast<float>(prev_lr < 0 ? h.lr : prev_lr) / prev_bc1;
  }
}

// fl(fl(base)^t): the power rounded once; optax's `1 - decay**count` under XLA equals
// 1 minus it for steps 1..1000, betas 0.9 to 0.999 (measured). A double pow of a float
// rounds to that except in vanishingly rare near-ties.
float rounded_power(double base, std::int64_t t) {
  return static_cast<float>(std::pow(static_cast<double>(static_cast<float>(base)),
                                     static_cast<double>(t)));
}

// 1 / (1 - b^t) in float32, optax's bias correction as XLA applies it (a multiplication by
// the reciprocal of the float32 denominator).
float optax_bc_recip(double beta, std::int64_t t) {
  return 1.0f / (1.0f - rounded_power(beta, t));
}

// optax.scale_by_adam's constants under jax.jit: W = fl(1-b1), B1, B2, C2 = fl(1-b2) (Python
// doubles cast to float32), R1, R1 of step t+1, R2, eps, eps_root, S = -lr (its
// scale_by_learning_rate), L = wd (add_decayed_weights). Γ: a = fl(lr*R1), a of step t-1
// (prev_lr), and R2 of step t-1 in place of D.
void optax_adam_coeffs(const AdamHyper& h, std::int64_t step, double prev_lr,
                       detail::AdamCoeffs<float>* f) {
  f->one_minus_beta1 = static_cast<float>(1.0 - h.beta1);
  f->beta1 = static_cast<float>(h.beta1);
  f->beta2 = static_cast<float>(h.beta2);
  f->one_minus_beta2 = static_cast<float>(1.0 - h.beta2);
  f->bc1_recip = optax_bc_recip(h.beta1, step);
  f->bc1_recip_next = optax_bc_recip(h.beta1, step + 1);
  f->bc2_recip = optax_bc_recip(h.beta2, step);
  f->eps = static_cast<float>(h.eps);
  f->eps_root = static_cast<float>(h.eps_root);
  f->neg_step_size = static_cast<float>(-h.lr);
  f->weight_decay = static_cast<float>(h.weight_decay);
  f->step_size = static_cast<float>(h.lr) * f->bc1_recip;
  f->prev_step_size = 1.0f;
  f->prev_bc2_sqrt = 1.0f;
  if (step > 1) {
    f->prev_step_size = static_cast<float>(prev_lr < 0 ? h.lr : prev_lr) *
                        optax_bc_recip(h.beta1, step - 1);
    f->prev_bc2_sqrt = optax_bc_recip(h.beta2, step - 1);
  }
}

// keras.optimizers.Adam's constants (Keras 3, all float32): b^t = ops.power(b, t), which
// on the jax backend is XLA's float32 pow and gives the C library's powf bits (measured,
// steps 1..1000, betas 0.9 to 0.999, apart from XLA flushing subnormal powers to 0, which
// leaves 1 - b^t unchanged); alpha = fl(fl(lr * fl(sqrt(1 - b2^t))) / fl(1 - b1^t)).
// Γ: a = alpha, and alpha of step t-1 (prev_lr).
float keras_alpha(const AdamHyper& h, double lr_value, std::int64_t step) {
  const float lr = static_cast<float>(lr_value);
  const float t = static_cast<float>(step);
  const float beta1_t = std::pow(static_cast<float>(h.beta1), t);
  const float beta2_t = std::pow(static_cast<float>(h.beta2), t);
  const float sqrt_bc2 = std::sqrt(1.0f - beta2_t);
  const float scaled_lr = lr * sqrt_bc2;
  return scaled_lr / (1.0f - beta1_t);
}

void keras_adam_coeffs(const AdamHyper& h, std::int64_t step, double prev_lr,
                       detail::AdamCoeffs<float>* f) {
  f->alpha = keras_alpha(h, h.lr, step);
  f->step_size = f->alpha;
  f->prev_step_size =
      step > 1 ? keras_alpha(h, prev_lr < 0 ? h.lr : prev_lr, step - 1) : 1.0f;
  f->lr = static_cast<float>(h.lr);
  f->one_minus_beta1 = static_cast<float>(1.0 - h.beta1);
  f->one_minus_beta2 = static_cast<float>(1.0 - h.beta2);
  f->eps = static_cast<float>(h.eps);
  f->weight_decay = static_cast<float>(h.weight_decay);
}

}  // namespace

void adam_step(const AdamBuffers* tensors, std::size_t count, std::int64_t step,
               const AdamHyper& h, GammaStats* diag, double prev_lr, const Layout& layout,
               const StepOptions& options) {
  const std::size_t layout_at = layout_index(layout);
  if (layout_at >= detail::kLayoutCount) return;  // callers check_layout first
  if (options.found_inf) return;
  detail::AdamScalars k{};
  adam_coeffs(h, step, prev_lr, &k);
  k.pass = pass_options(options, step);
  // torch divides by the float32 scale in float (16-bit and float32) or in double.
  k.f.grad_scale = options.grad_scale;
  k.d.grad_scale = options.grad_scale;
  k.f.clip_coef = static_cast<float>(options.clip_coef);
  k.d.clip_coef = options.clip_coef;
  k.sign_flip = h.maximize ? 0x80000000u : 0u;
  k.gamma_defined = step > 1;

  detail::WdMode wd = detail::WdMode::none;
  if (h.weight_decay != 0) wd = h.decoupled ? detail::WdMode::decoupled : detail::WdMode::l2;
  // torch's lerp uses weight*(end-start)+start when |weight| < 0.5, else the other form,
  // deciding in the layout's arithmetic.
  const bool lerp_low = layout.param == DType::float64 ? k.d.one_minus_beta1 < 0.5
                                                       : k.f.one_minus_beta1 < 0.5f;
  // (each convention's Γ comes from its own denominator and step size, kernels.inl)
  if (h.convention == Convention::deepspeed) deepspeed_adam_coeffs(h, step, prev_lr, &k.f);
  if (h.convention == Convention::optax) optax_adam_coeffs(h, step, prev_lr, &k.f);
  if (h.convention == Convention::keras) keras_adam_coeffs(h, step, prev_lr, &k.f);
  const Isa isa = active_isa();
  const detail::AdamRangeFn kernel =
      adam_kernel_for(isa, layout_at, wd, lerp_low, h.amsgrad, diag != nullptr,
                      body_recipe(h.convention, h.nesterov));
  const detail::AdamRangeFn tail_kernel =
      h.tail_width ? adam_kernel_for(isa, layout_at, wd, lerp_low, h.amsgrad, diag != nullptr,
                                     tail_recipe(h.convention))
                   : nullptr;
  run_kernel(kernel, k, tensors, count, diag, tail_kernel,
             static_cast<std::size_t>(h.tail_width));
}

void adagrad_step(const AdagradBuffers* tensors, std::size_t count, std::int64_t step,
                  const AdagradHyper& h, GammaStats* diag, double prev_lr,
                  const Layout& layout, const StepOptions& options) {
  const std::size_t layout_at = layout_index(layout);
  if (layout_at >= detail::kLayoutCount) return;  // callers check_layout first
  if (options.found_inf) return;
  detail::AdagradScalars k{};
  // clr = lr / (1 + (t-1)*lr_decay), the denominator one fused multiply-add as in torch.
  const double clr = h.lr / std::fma(static_cast<double>(step - 1), h.lr_decay, 1.0);
  double prev_clr = 1.0;
  if (step > 1) {
    const double lr0 = prev_lr < 0 ? h.lr : prev_lr;
    prev_clr = lr0 / std::fma(static_cast<double>(step - 2), h.lr_decay, 1.0);
  }
  k.d = {-clr, h.weight_decay, h.eps, options.grad_scale, options.clip_coef, clr, prev_clr};
  k.f.grad_scale = options.grad_scale;
  k.f.clip_coef = static_cast<float>(options.clip_coef);
  k.pass = pass_options(options, step);
  // torch's 16-bit AdaGrad rounds clr, weight_decay and eps to the param's dtype; so
  // does adamcore's same-dtype layout, to match it. Mixed layouts keep float32.
  const bool one_dtype = layout.grad == layout.param && layout.state == layout.param;
  const DType round_to = one_dtype ? layout.param : DType::float32;
  k.f.neg_clr = -round_through(round_to, static_cast<float>(clr));
  k.f.weight_decay = round_through(round_to, static_cast<float>(h.weight_decay));
  k.f.eps = round_through(round_to, static_cast<float>(h.eps));
  k.f.clr = static_cast<float>(clr);
  k.f.prev_clr = static_cast<float>(prev_clr);
  k.sign_flip = h.maximize ? 0x80000000u : 0u;
  k.gamma_defined = step > 1;
  // (torch's AdaGrad scalar loop contracts as its vector body does: no tail recipe.)
  const bool tail = h.tail_width != 0 && h.convention == Convention::deepspeed;
  const Isa isa = active_isa();
  const detail::AdagradRangeFn kernel = adagrad_kernel_for(
      isa, layout_at, h.weight_decay != 0, diag != nullptr, body_recipe(h.convention));
  const detail::AdagradRangeFn tail_kernel =
      tail ? adagrad_kernel_for(isa, layout_at, h.weight_decay != 0, diag != nullptr,
                                tail_recipe(h.convention))
           : nullptr;

  run_kernel(kernel, k, tensors, count, diag, tail_kernel,
             tail ? static_cast<std::size_t>(h.tail_width) : 0);
}

// ---------------------------------------------------------------- SGD and Lion
std::string check_sgd_hyper(const SgdHyper& h) {
  if (!std::isfinite(h.lr) || h.lr < 0) return bad("lr", h.lr, "finite and >= 0");
  if (!std::isfinite(h.momentum) || h.momentum < 0) {
    return bad("momentum", h.momentum, "finite and >= 0");
  }
  if (!std::isfinite(h.dampening)) return bad("dampening", h.dampening, "finite");
  if (!std::isfinite(h.weight_decay) || h.weight_decay < 0) {
    return bad("weight_decay", h.weight_decay, "finite and >= 0");
  }
  if (h.nesterov && (h.momentum <= 0 || h.dampening != 0)) {
    return "nesterov needs momentum > 0 and dampening 0 (as torch's SGD), got momentum " +
           std::to_string(h.momentum) + " and dampening " + std::to_string(h.dampening);
  }
  if (h.tail_width != 0 && h.tail_width != 8 && h.tail_width != 16) {
    return "tail_width must be 0, 8 or 16 (torch's float32 vector width), got " +
           std::to_string(h.tail_width);
  }
  return {};
}

std::string check_lion_hyper(const LionHyper& h) {
  if (!std::isfinite(h.lr) || h.lr < 0) return bad("lr", h.lr, "finite and >= 0");
  if (!std::isfinite(h.beta1) || h.beta1 < 0 || h.beta1 > 1) {
    return bad("beta1", h.beta1, "in [0, 1]");
  }
  if (!std::isfinite(h.beta2) || h.beta2 < 0 || h.beta2 > 1) {
    return bad("beta2", h.beta2, "in [0, 1]");
  }
  if (!std::isfinite(h.weight_decay) || h.weight_decay < 0) {
    return bad("weight_decay", h.weight_decay, "finite and >= 0");
  }
  if (h.convention != LionConvention::paper && h.convention != LionConvention::deepspeed) {
    return "convention must be paper or deepspeed";
  }
  return {};
}

std::string check_sgd_layout(const Layout& layout) {
  if (layout_index(layout) < detail::kSameDtypeLayouts) return {};
  return std::string("unsupported dtypes: params ") + dtype_name(layout.param) + ", grads " +
         dtype_name(layout.grad) + ", state " + dtype_name(layout.state) + ", param_copy " +
         dtype_name(layout.param_copy) +
         ". Accepted: one dtype for params, grads and state (float32, float64, bfloat16 or "
         "float16) and no param_copy";
}

std::string check_lion_layout(const Layout& layout, LionConvention convention) {
  std::string err = check_sgd_layout(layout);
  if (err.empty() && convention == LionConvention::deepspeed &&
      layout.param == DType::float64) {
    err = "the deepspeed convention computes in float32 (as DeepSpeedCPULion, which has no "
          "float64 kernel): use float32, bfloat16 or float16, or the paper convention";
  }
  return err;
}

void sgd_step(const SgdBuffers* tensors, std::size_t count, bool first_step, const SgdHyper& h,
              const Layout& layout, const StepOptions& options) {
  const std::size_t layout_at = layout_index(layout);
  if (layout_at >= detail::kSameDtypeLayouts) return;  // callers check_sgd_layout first
  if (options.found_inf) return;
  detail::SgdScalars k{};
  // torch passes its hyperparameters as doubles and rounds each to the arithmetic's type
  // (1 - dampening in double first).
  k.d = {h.weight_decay, h.momentum, 1.0 - h.dampening, -h.lr, options.grad_scale,
         options.clip_coef};
  k.f = {static_cast<float>(k.d.weight_decay), static_cast<float>(k.d.momentum),
         static_cast<float>(k.d.one_minus_dampening), static_cast<float>(k.d.neg_lr),
         options.grad_scale, static_cast<float>(options.clip_coef)};
  k.sign_flip = h.maximize ? 0x80000000u : 0u;
  k.gamma_defined = false;
  k.pass = pass_options(options, 0);
  k.pass.stochastic = false;  // no step number to key it by: nearest even only
  detail::SgdMomentum momentum = detail::SgdMomentum::none;
  if (h.momentum != 0) {
    momentum = first_step ? detail::SgdMomentum::first : detail::SgdMomentum::running;
  }
  const auto& row = detail::kElementwiseRows[static_cast<int>(active_isa())];
  const bool nesterov = h.nesterov && h.momentum != 0;
  const detail::SgdRangeFn kernel = row.sgd(layout_at, h.weight_decay != 0, momentum, nesterov,
                                            false);
  // torch's scalar tail differs only in a running momentum; its width counts floats.
  const bool tail = h.tail_width != 0 && momentum == detail::SgdMomentum::running;
  const std::size_t width = static_cast<std::size_t>(h.tail_width) /
                            (layout.param == DType::float64 ? 2 : 1);
  run_kernel(kernel, k, tensors, count, nullptr,
             tail ? row.sgd(layout_at, h.weight_decay != 0, momentum, nesterov, true) : nullptr,
             tail ? width : 0);
}

void lion_step(const LionBuffers* tensors, std::size_t count, const LionHyper& h,
               const Layout& layout, const StepOptions& options) {
  const std::size_t layout_at = layout_index(layout);
  if (layout_at >= detail::kSameDtypeLayouts) return;  // callers check_lion_layout first
  if (options.found_inf) return;
  detail::LionScalars k{};
  const bool deepspeed = h.convention == LionConvention::deepspeed;
  // Paper: each constant in double, rounded once to the arithmetic's type.
  k.d = {h.beta1, 1.0 - h.beta1, h.beta2, 1.0 - h.beta2, h.lr, -h.lr, 1.0 - h.lr * h.weight_decay,
         options.grad_scale, options.clip_coef};
  k.f = {static_cast<float>(k.d.beta1), static_cast<float>(k.d.one_minus_beta1),
         static_cast<float>(k.d.beta2), static_cast<float>(k.d.one_minus_beta2),
         static_cast<float>(k.d.lr), static_cast<float>(k.d.neg_lr),
         static_cast<float>(k.d.decay_factor), options.grad_scale,
         static_cast<float>(options.clip_coef)};
  if (deepspeed) {
    // DeepSpeed receives float32 hyperparameters and forms 1 - b and 1 - lr*wd in float.
    const float lr = static_cast<float>(h.lr);
    const float wd = static_cast<float>(h.weight_decay);
    k.f.one_minus_beta1 = 1.0f - k.f.beta1;
    k.f.one_minus_beta2 = 1.0f - k.f.beta2;
    k.f.decay_factor = 1.0f - lr * wd;
  }
  k.sign_flip = h.maximize ? 0x80000000u : 0u;
  k.gamma_defined = false;
  k.pass = pass_options(options, 0);
  k.pass.stochastic = false;  // no step number to key it by: nearest even only
  // DeepSpeed decays only when weight_decay > 0; the paper's p * 1 is exact anyway.
  const detail::LionRangeFn kernel = detail::kElementwiseRows[static_cast<int>(active_isa())].lion(
      layout_at, h.convention, h.weight_decay > 0);
  run_kernel(kernel, k, tensors, count, nullptr);
}

}  // namespace adamcore
