// adamcore: exact CPU kernels for Adam, AdamW, AMSGrad and AdaGrad.
//
// Public C++ API. No intrinsics and no Python here: the kernel library built from
// this header is tested on its own (natively, under qemu for aarch64, and under
// sanitizers) and wrapped by the Python bindings.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace adamcore {

// ---------------------------------------------------------------- ISA control
enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2, neon = 3 };
constexpr int kIsaCount = 4;

const char* isa_name(Isa isa);
// Parses "scalar", "avx2", "avx512" or "neon". Returns false for anything else.
bool isa_from_name(const std::string& name, Isa* out);
bool isa_compiled(Isa isa);   // a kernel for it is in this build
bool isa_supported(Isa isa);  // compiled and this CPU + OS can run it
Isa best_isa();               // the fastest supported one
Isa active_isa();
// Selects the kernels used from now on. Returns false (and changes nothing) if the
// ISA is not supported here.
bool set_isa(Isa isa);
// "avx2, avx512, neon, scalar": every name set_isa understands, for error messages.
std::string isa_choices();

// ---------------------------------------------------------------- threads
constexpr int kMaxThreads = 1024;
// Number of threads a large step may use (OpenMP's when built with it, else the
// hardware's), clamped to [1, kMaxThreads].
int get_num_threads();
void set_num_threads(int n);
// Steps touching fewer elements than this stay on the calling thread (any value,
// SIZE_MAX included: it means never).
std::size_t get_parallel_threshold();
void set_parallel_threshold(std::size_t elements);
bool built_with_openmp();

// How the threads are doing: whether this process is a child forked after threads ran
// (every step then runs on the calling thread), and the stall guard's state.
struct ThreadingStatus {
  int requested = 1;               // get_num_threads()
  bool forked_child = false;
  std::int64_t solo_steps_left = 0;  // steps that will run alone after a stall
  std::int64_t stalls = 0;           // steps whose caller waited for an unscheduled helper
};
ThreadingStatus threading_status();

// ---------------------------------------------------------------- conventions
// Whose arithmetic a step reproduces, bit for bit (docs/numerics.md, "Conventions in the
// kernel"). Non-default conventions exist for the all-float32 layout only.
enum class Convention : int {
  torch_fused = 0,  // torch.optim's fused CPU kernels (the default; canonical recipe)
  deepspeed = 1,    // DeepSpeedCPUAdam / DeepSpeedCPUAdagrad (float32 host scalars)
  optax = 2,        // optax.adam / adamw / amsgrad / adagrad under jax.jit
  keras = 3,        // keras.optimizers.Adam / AdamW / Adagrad (keras 3)
};
constexpr int kConventionCount = 4;
const char* convention_name(Convention c);  // "torch-fused", "deepspeed", "optax", "keras"
// Parses one of convention_name's names. Returns false for anything else.
bool convention_from_name(const std::string& name, Convention* out);
// Empty when the convention (and tail_width) can run on `layout`, else a message that
// starts with the offending argument's name.
struct Layout;
std::string check_convention(Convention c, int tail_width, const Layout& layout);

// ---------------------------------------------------------------- hyperparameters
struct AdamHyper {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool decoupled = false;        // AdamW: decay the parameter, not the gradient
  bool amsgrad = false;          // keep a running max of exp_avg_sq
  bool maximize = false;         // ascend instead of descend
  bool bias_correction = true;   // false: step_size = lr and no sqrt(bc2) division
  Convention convention = Convention::torch_fused;
  // torch-fused and deepspeed: 8 or 16 gives each tensor's last size % tail_width
  // elements the peer's scalar-loop recipe (its float32 vector width: torch's
  // Vec<float>::size(), DeepSpeed's SIMD_WIDTH); 0: the vector recipe everywhere.
  int tail_width = 0;
  // optax only (its scale_by_adam): eps_root is added to the bias-corrected v under the
  // square root; nesterov uses Dozat's Nadam form of the bias-corrected m (no amsgrad).
  double eps_root = 0.0;
  bool nesterov = false;
};

struct AdagradHyper {
  double lr = 1e-2;
  double lr_decay = 0.0;
  double weight_decay = 0.0;
  double eps = 1e-10;
  bool maximize = false;
  Convention convention = Convention::torch_fused;
  int tail_width = 0;  // as AdamHyper::tail_width
};

// Returns an empty string when the hyperparameters are valid, else a message that
// starts with the offending argument's name.
std::string check_adam_hyper(const AdamHyper& h, std::int64_t step);
std::string check_adagrad_hyper(const AdagradHyper& h, std::int64_t step);

// ---------------------------------------------------------------- buffers
// Element types of the buffers. bfloat16 and float16 are stored as their 16 bits.
enum class DType : int { none = 0, float32 = 1, float64 = 2, bfloat16 = 3, float16 = 4 };
const char* dtype_name(DType dtype);  // "float32", "bfloat16", ...; "none"

// The dtypes of a call's buffers: params, grads, every state buffer (exp_avg,
// exp_avg_sq, max_exp_avg_sq; AdaGrad's sum), and the optional low-precision copy of
// the updated params (none: not written). Accepted:
//   - one dtype everywhere: float32, float64, bfloat16 or float16 (16-bit: float32
//     arithmetic; float64: double arithmetic), no copy;
//   - float32 master weights: float32 params and state with bfloat16 or float16
//     grads, optionally a param_copy of the grads' dtype; or float32 grads with a
//     bfloat16 or float16 param_copy;
//   - bfloat16 or float16 params and grads with float32 state (DeepSpeed's layout);
//   - float32 params with bfloat16 state, float32 or bfloat16 grads, optionally a
//     bfloat16 param_copy.
// Mixed layouts compute in float32 on the exactly widened values and round each 16-bit
// buffer once, to nearest even (check_layout's message lists the same).
struct Layout {
  DType param = DType::float32;
  DType grad = DType::float32;
  DType state = DType::float32;
  DType param_copy = DType::none;
};
// Empty when `layout` is accepted, else a message naming the accepted layouts.
std::string check_layout(const Layout& layout);
std::size_t dtype_size(DType dtype);  // bytes per element; 0 for none

// One tensor's buffers, each `size` contiguous elements of the call's Layout.
// max_exp_avg_sq is used only (and then required) with amsgrad; param_copy only (and
// then required) when the layout has one.
struct AdamBuffers {
  void* param = nullptr;
  const void* grad = nullptr;
  void* exp_avg = nullptr;
  void* exp_avg_sq = nullptr;
  void* max_exp_avg_sq = nullptr;
  std::size_t size = 0;
  void* param_copy = nullptr;
  std::uint64_t stream = 0;  // this tensor's stochastic-rounding stream (StepOptions)
};

struct AdagradBuffers {
  void* param = nullptr;
  const void* grad = nullptr;
  void* state_sum = nullptr;
  std::size_t size = 0;
  void* param_copy = nullptr;
  std::uint64_t stream = 0;
};

// How 16-bit params, state and param copies are stored.
enum class Rounding : int {
  nearest = 0,     // to nearest, ties to even
  // Up or down with probabilities proportional to the distances (unbiased): the random
  // bits are a hash of (seed, step, the tensor's stream, element index, buffer), so the
  // result is the same on every ISA and thread count and for any grouping of tensors.
  stochastic = 1,
};

// What a step does besides the optimizer's math.
struct StepOptions {
  // AMP (torch's fused grad_scale): when non-zero, each grad is divided by grad_scale
  // (in the layout's arithmetic) in the pass and the quotient is written back to the
  // grad buffer, rounded to its dtype, before the update uses the unrounded quotient.
  // The grads are written through AdamBuffers::grad, which must then be writable.
  float grad_scale = 0.0f;
  // torch's found_inf: when true the step writes nothing at all.
  bool found_inf = false;
  // Gradient clipping fused into the step: each grad (after unscaling, read back as
  // stored) is multiplied by clip_coef, and for 16-bit grads rounded to their dtype, as
  // torch's clip_grad_norm_ leaves it in the grad buffer; the buffer itself is not
  // written. 1: no clipping. Float layouts use it rounded to float32.
  double clip_coef = 1.0;
  Rounding rounding = Rounding::nearest;
  std::uint64_t seed = 0;
};
// Empty when the options are valid (grad_scale 0, or finite and > 0; clip_coef finite
// and >= 0), else a message
// that starts with the offending argument's name.
std::string check_step_options(const StepOptions& options);

// ---------------------------------------------------------------- diagnostics
// Reddi et al.'s Γ, per coordinate i, in adamcore's arithmetic:
//   Γ_i = den_{t,i} / a_t − den_{t−1,i} / a_{t−1}
// where den is the canonical denominator and a the step size (Adam: lr/bc1, AdaGrad:
// the decayed lr), i.e. the change of the inverse effective learning rate. Γ_i < 0
// means coordinate i's effective learning rate a/den grew. Only counts, minima and
// maxima are reduced, so every number is identical on every ISA and thread count.
// NaN values are skipped.
struct GammaStats {
  bool defined = false;          // false at step 1: there is no previous step
  std::int64_t count = 0;        // coordinates examined
  std::int64_t negative = 0;     // coordinates with Γ_i < 0
  std::int64_t undefined = 0;    // coordinates whose Γ_i is NaN (NaN/Inf in the state)
  float gamma_min = 0.0f;        // min Γ_i (+inf if none, NaN if !defined)
  float lr_min = 0.0f;           // min effective learning rate a_t / den_{t,i}
  float lr_max = 0.0f;           // max effective learning rate
};

// ---------------------------------------------------------------- steps
// Updates `count` tensors in place; `step` is the step number after incrementing
// (1 on the first step). Hyperparameters must pass check_*_hyper, the layout
// check_layout, and buffers must not overlap: the callers (bindings, tests) validate
// before calling. With `diag` non-null the Γ statistics over all tensors are written
// there; `prev_lr` is the learning rate of the previous step (negative: same as lr).
// Γ is computed for Convention::torch_fused only (`diag` is left untouched otherwise); a
// non-default convention must pass check_convention for `layout`.
void adam_step(const AdamBuffers* tensors, std::size_t count, std::int64_t step,
               const AdamHyper& hyper, GammaStats* diag = nullptr, double prev_lr = -1.0,
               const Layout& layout = Layout{}, const StepOptions& options = StepOptions{});
void adagrad_step(const AdagradBuffers* tensors, std::size_t count, std::int64_t step,
                  const AdagradHyper& hyper, GammaStats* diag = nullptr,
                  double prev_lr = -1.0, const Layout& layout = Layout{},
                  const StepOptions& options = StepOptions{});

// ---------------------------------------------------------------- SGD and Lion
// SGD as torch.optim.SGD(fused=True) computes it (docs/numerics.md, "SGD").
struct SgdHyper {
  double lr = 1e-3;
  double momentum = 0.0;         // 0: no momentum buffer
  double dampening = 0.0;
  double weight_decay = 0.0;     // added to the gradient (L2)
  bool nesterov = false;         // needs momentum > 0 and dampening 0
  bool maximize = false;
  // 8 or 16 (torch's float32 vector width): each tensor's last size % tail_width elements
  // (size % (tail_width / 2) for float64) take torch fused's scalar-loop momentum
  // recipe, fma(m, momentum, g * (1 - dampening)). 0: the vector body's on every element.
  int tail_width = 0;
};

// Lion (Chen et al. 2023) in one of two roundings (docs/numerics.md, "Lion").
enum class LionConvention : int {
  paper = 0,      // the paper's formulas, one correctly rounded operation each
  deepspeed = 1,  // DeepSpeedCPULion's: fused multiply-adds, float32 host scalars,
                  // the update -copysign(lr, c) (so sign(0) is 1), decay only when wd > 0
};
struct LionHyper {
  double lr = 1e-4;
  double beta1 = 0.9;
  double beta2 = 0.99;
  double weight_decay = 0.0;     // decoupled: the parameter is multiplied by 1 - lr*wd
  bool maximize = false;
  LionConvention convention = LionConvention::paper;
};

// Empty when valid, else a message that starts with the offending argument's name.
std::string check_sgd_hyper(const SgdHyper& h);
std::string check_lion_hyper(const LionHyper& h);
// SGD and Lion take the four one-dtype layouts only (float32, float64, bfloat16,
// float16; 16-bit computes in float32). Lion's deepspeed convention has no float64.
std::string check_sgd_layout(const Layout& layout);
std::string check_lion_layout(const Layout& layout, LionConvention convention);

// momentum_buffer: used only (and then required) when momentum != 0.
struct SgdBuffers {
  void* param = nullptr;
  const void* grad = nullptr;
  void* momentum_buffer = nullptr;
  std::size_t size = 0;
  std::uint64_t stream = 0;  // stochastic-rounding stream (StepOptions)
};

struct LionBuffers {
  void* param = nullptr;
  const void* grad = nullptr;
  void* exp_avg = nullptr;
  std::size_t size = 0;
  std::uint64_t stream = 0;
};

// One SGD step over `count` tensors. first_step: the momentum buffers hold nothing yet
// and are set to the (decayed) gradient, as torch does when it creates them. Options:
// grad_scale and found_inf as torch's fused SGD takes them; clip_coef and rounding as
// for Adam. Callers validate first (check_sgd_hyper, check_sgd_layout, disjoint buffers).
void sgd_step(const SgdBuffers* tensors, std::size_t count, bool first_step,
              const SgdHyper& hyper, const Layout& layout = Layout{},
              const StepOptions& options = StepOptions{});
void lion_step(const LionBuffers* tensors, std::size_t count, const LionHyper& hyper,
               const Layout& layout = Layout{}, const StepOptions& options = StepOptions{});

}  // namespace adamcore
