// THE ONLY COPY OF THE OPTIMIZER MATH.
//
// Included once per ISA by kernels_<isa>.cpp after it has defined ADAMCORE_NS and the
// alias `Vec` (that ISA's vector type). The vector body and the tail run the same
// template, the tail at one lane (VecScalar), so every element gets the same bits
// whatever its position, the buffer's alignment, the ISA or the thread split.
// The arithmetic is docs/numerics.md's canonical recipe; every operation below is a
// correctly rounded IEEE operation (no estimates, no contraction: -ffp-contract=off).
// The buffers' dtypes (detail::kLayouts) are template parameters too: loads widen to
// the layout's arithmetic (float, or double for float64) and stores round to nearest
// even, through the Vec types' load/store overloads.

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "kernel_api.h"
#include "vec/vec_pair.h"

namespace adamcore::ADAMCORE_NS {
namespace {

using detail::AdagradCoeffs;
using detail::AdagradScalars;
using detail::AdamCoeffs;
using detail::AdamScalars;
using detail::DiagAccum;
using detail::Recipe;
using detail::WdMode;

template <DType D>
struct StorageOf;
template <>
struct StorageOf<DType::none> {
  using type = void;
};
template <>
struct StorageOf<DType::float32> {
  using type = float;
};
template <>
struct StorageOf<DType::float64> {
  using type = double;
};
template <>
struct StorageOf<DType::bfloat16> {
  using type = detail::Bf16;
};
template <>
struct StorageOf<DType::float16> {
  using type = detail::F16;
};

template <class T>
inline constexpr bool kIs16Bit =
    std::is_same_v<T, detail::Bf16> || std::is_same_v<T, detail::F16>;

// Layout L's element types and arithmetic: params Param, state State, grads Grad,
// the param copy Copy (void: none). float64 is never mixed with another dtype.
template <std::size_t L>
struct LayoutTypes {
  using Param = typename StorageOf<detail::kLayouts[L].param>::type;
  using State = typename StorageOf<detail::kLayouts[L].state>::type;
  using Grad = typename StorageOf<detail::kLayouts[L].grad>::type;
  using Copy = typename StorageOf<detail::kLayouts[L].param_copy>::type;
  static constexpr bool kDouble = std::is_same_v<Param, double>;
  using Math = std::conditional_t<kDouble, double, float>;
  static constexpr bool kAny16Bit = kIs16Bit<Param> || kIs16Bit<State> || kIs16Bit<Copy>;
  static constexpr bool kAnyBf16 = std::is_same_v<Param, detail::Bf16> ||
                                   std::is_same_v<State, detail::Bf16> ||
                                   std::is_same_v<Copy, detail::Bf16>;
  // The vector body's type: two vectors per step where that lets bfloat16 stores pack
  // two vectors into one full-width store.
  using Body = std::conditional_t<kDouble, VecF64,
                                  std::conditional_t<kAnyBf16 && StoresBf16Pairs<Vec>::value,
                                                     Pair<Vec>, Vec>>;
  using One = std::conditional_t<kDouble, VecScalarF64, VecScalar>;  // head and tail
};

// Running Γ statistics in vector lanes; reduced to a DiagAccum at the end.
template <class V>
struct DiagLanes {
  std::int64_t negative = 0;
  std::int64_t undefined = 0;
  V gamma_min = V::set1(__builtin_inff());
  V lr_min = V::set1(__builtin_inff());
  V lr_max = V::set1(-__builtin_inff());

  // inv_new, inv_old: inverse effective learning rates den/a of this and the previous
  // step; lr: this step's effective learning rate a/den.
  void add(V inv_new, V inv_old, V lr, bool gamma_defined) {
    if (gamma_defined) {
      // + 0 turns -0 into +0 so the minimum cannot depend on the order of ties.
      const V gamma = ::adamcore::ADAMCORE_NS::add(sub(inv_new, inv_old), V::set1(0.0f));
      negative += count_negative(gamma);
      undefined += count_nan(gamma);
      gamma_min = keep_min(gamma_min, gamma);
    }
    const V lr0 = ::adamcore::ADAMCORE_NS::add(lr, V::set1(0.0f));
    lr_min = keep_min(lr_min, lr0);
    lr_max = keep_max(lr_max, lr0);
  }
  void merge_into(DiagAccum* acc) const {
    // (float64 layouts: rounding to float is monotonic, so it commutes with min/max.)
    DiagAccum mine;
    mine.negative = negative;
    mine.undefined = undefined;
    mine.gamma_min = static_cast<float>(reduce_min(gamma_min));
    mine.lr_min = static_cast<float>(reduce_min(lr_min));
    mine.lr_max = static_cast<float>(reduce_max(lr_max));
    detail::diag_merge(acc, mine);
  }
};

template <class Math>
const AdamCoeffs<Math>& coeffs_for(const AdamScalars& k) {
  if constexpr (std::is_same_v<Math, double>) {
    return k.d;
  } else {
    return k.f;
  }
}
template <class Math>
const AdagradCoeffs<Math>& coeffs_for(const AdagradScalars& k) {
  if constexpr (std::is_same_v<Math, double>) {
    return k.d;
  } else {
    return k.f;
  }
}

template <class V>
struct AdamConsts {
  V w, w_less1, b1, b2, c2, d, e, s, l, k, grad_scale, clip_coef;
  V r1, r1_next, r2, eps_root, lr, alpha;  // optax and keras recipes
  // diagnostics
  V a, a_prev, d_prev;
  template <class T>
  explicit AdamConsts(const AdamCoeffs<T>& c)
      : w(V::set1(c.one_minus_beta1)), w_less1(V::set1(c.one_minus_beta1_less1)),
        b1(V::set1(c.beta1)), b2(V::set1(c.beta2)), c2(V::set1(c.one_minus_beta2)), d(V::set1(c.bc2_sqrt)),
        e(V::set1(c.eps)), s(V::set1(c.neg_step_size)), l(V::set1(c.weight_decay)),
        k(V::set1(c.decay_factor)), grad_scale(V::set1(c.grad_scale)),
        clip_coef(V::set1(c.clip_coef)), r1(V::set1(c.bc1_recip)),
        r1_next(V::set1(c.bc1_recip_next)), r2(V::set1(c.bc2_recip)),
        eps_root(V::set1(c.eps_root)), lr(V::set1(c.lr)), alpha(V::set1(c.alpha)),
        a(V::set1(c.step_size)),
        a_prev(V::set1(c.prev_step_size)), d_prev(V::set1(c.prev_bc2_sqrt)) {}
};

// ---- stochastic rounding (docs/numerics.md). Each 16-bit store takes 32 random bits per
// element from a hash of (element index, a key of the seed, step, tensor and buffer), so
// an element's rounding does not depend on the ISA, the thread or the grouping.
template <class U>
U lane_hash(U x, U mul1, U mul2) {
  x = bit_xor(x, shift_right<16>(x));
  x = mul_lo(x, mul1);
  x = bit_xor(x, shift_right<15>(x));
  x = mul_lo(x, mul2);
  return bit_xor(x, shift_right<16>(x));
}

// float16's stochastic rounding (bfloat16's is the Vec types' store_stochastic): 13
// dropped bits in the normal range; below 2^-14, where a half's last place is 2^-24, the
// magnitude in those units plus a random fraction, truncated.
template <class V>
V round_stochastic(const detail::F16*, V x, typename V::Bits r) {
  using U = typename V::Bits;
  const U r13 = shift_right<19>(r);
  const U bits = as_bits(x);
  const V magnitude = from_bits(bit_and(bits, U::set1(0x7FFFFFFFu)));
  const V normal = from_bits(bit_and(add(bits, r13), U::set1(0xFFFFE000u)));
  const V units = trunc(add(mul(magnitude, V::set1(0x1p24f)), mul(to_float(r13), V::set1(0x1p-13f))));
  const V subnormal = from_bits(bit_or(as_bits(mul(units, V::set1(0x1p-24f))),
                                       bit_and(bits, U::set1(0x80000000u))));
  const V rounded = select(less_mask(magnitude, V::set1(0x1p-14f)), subnormal, normal);
  return select(nan_mask(x), x, rounded);
}

// What the stores of one element loop need for stochastic rounding. On is a template
// parameter of the loops, so the round-to-nearest loop has no trace of it (an empty
// struct). On: the lanes' element indices (low 32 bits), stepped with the loop, and each
// buffer's key for this range (whose indices share their upper 32 bits: the ranges are
// cut at multiples of 2^32), as vectors next to the hash's multipliers so that the loop
// keeps them in registers. Passed by value, so the stores cannot alias it.
template <class V, bool On>
struct SrLanes {
  void next() {}
};
template <class V>
struct SrLanes<V, true> {
  using U = typename V::Bits;
  U index;
  U keys[detail::sr_buffer_count];
  U mul1, mul2;
  void next() { index = add(index, U::set1(static_cast<std::uint32_t>(V::kLanes))); }
  U random(std::uint32_t which) const { return lane_hash(add(index, keys[which]), mul1, mul2); }
};

// The stochastic-rounding state of elements [from, ...) of a tensor.
template <class V, bool On>
inline SrLanes<V, On> sr_lanes([[maybe_unused]] const detail::PassOptions& pass,
                               [[maybe_unused]] std::uint64_t stream,
                               [[maybe_unused]] std::size_t from) {
  SrLanes<V, On> sr;
  if constexpr (On) {
    using U = typename V::Bits;
    sr.index = U::iota(static_cast<std::uint32_t>(from));
    sr.mul1 = U::set1(detail::kHashMul1);
    sr.mul2 = U::set1(detail::kHashMul2);
    const std::uint64_t hi = static_cast<std::uint64_t>(from) >> 32;
    for (std::uint32_t b = 0; b < detail::sr_buffer_count; ++b) {
      sr.keys[b] = U::set1(detail::sr_buffer_key(pass.key, stream, hi, b));
    }
  }
  return sr;
}

// Calls fn(std::bool_constant<stochastic>) once: the element loops are compiled twice
// for layouts with a 16-bit buffer (nearest and stochastic), once for the others.
template <bool Any16Bit, class Fn>
inline void with_rounding(bool stochastic, Fn fn) {
  if constexpr (Any16Bit) {
    if (stochastic) {
      fn(std::true_type{});
      return;
    }
  }
  fn(std::false_type{});
}

// Calls fn(a, b) for the pieces of [begin, end) between multiples of 2^32 elements (one
// piece unless the tensor is larger), so no vector holds two values of the index's
// upper half.
template <class Fn>
inline void for_index_halves(std::size_t begin, std::size_t end, Fn fn) {
  constexpr std::uint64_t kHalf = std::uint64_t{1} << 32;
  while (begin < end) {
    const std::uint64_t next = (static_cast<std::uint64_t>(begin) / kHalf + 1) * kHalf;
    const std::size_t piece_end =
        next < static_cast<std::uint64_t>(end) ? static_cast<std::size_t>(next) : end;
    fn(begin, piece_end);
    begin = piece_end;
  }
}

// Stores x to a buffer of type T (its dtype), rounding stochastically when Sr.
template <class V, class T, bool Sr>
inline void store_as(T* ptr, V x, const SrLanes<V, Sr>& sr, [[maybe_unused]] std::uint32_t which) {
  if constexpr (Sr && std::is_same_v<T, detail::Bf16>) {
    store_stochastic(ptr, x, sr.random(which));
    return;
  } else if constexpr (Sr && kIs16Bit<T>) {
    x = round_stochastic(ptr, x, sr.random(which));
  }
  store(ptr, x);
}

// Writes the updated params' low-precision copy, when the layout has one.
template <class C, class V, bool Sr>
inline void store_copy([[maybe_unused]] C* copy_ptr, [[maybe_unused]] V p,
                       [[maybe_unused]] const SrLanes<V, Sr>& sr) {
  if constexpr (!std::is_void_v<C>) store_as(copy_ptr, p, sr, detail::sr_copy);
}

// x rounded to the dtype of G and widened back (16-bit G; other types: x itself).
template <class G, class V>
inline V through(V x) {
  if constexpr (kIs16Bit<G>) {
    G lanes[V::kLanes];
    store(lanes, x);
    return V::load(lanes);
  } else {
    return x;
  }
}

// The grad, unscaled (AMP, written back) and clipped (not written) when asked, then
// negated for maximize. A clipped grad is what unscale-then-clip would leave in the
// grad buffer: the stored quotient times the coefficient, in the grad's dtype.
// (Always inlined: with 16-bit grads and the two-vector body GCC kept it out of line,
// a call per vector.)
template <class V, class G, class C>
[[gnu::always_inline]] inline V load_grad(const G* g_ptr, const C& c, detail::PassOptions pass,
                   std::uint32_t sign_flip) {
  V g = V::load(g_ptr);
  if (pass.unscale) {
    g = div(g, c.grad_scale);
    store(const_cast<G*>(g_ptr), g);  // StepOptions: the grads are writable then
  }
  if (pass.clip) g = through<G>(mul(pass.unscale ? through<G>(g) : g, c.clip_coef));
  return flip_sign(g, sign_flip);
}

// One vector (or one element) of Adam / AdamW / AMSGrad. P: the params' storage type,
// S: the state's, G: the grads', C: the param copy's (void: none).
// DeepSpeedCPUAdam's element recipe (its Step_AVX; Convention::deepspeed): m and v as
// b*x + (1-b)*y with one fused multiply-add each, the denominator fused with the
// reciprocal of sqrt(bc2), the update a quotient added by fma, AdamW's decay p*(-lr*wd)+p.
// Its scalar loop (Tail) is compiled with contraction, which fuses the other product:
// fma(m, B1, g*W) and fma(v, B2, (g*g)*C2).
// Γ (Diag): den = fma(sqrt(v), D, E) with D its 1/sqrt(bc2); a = lr/bc1 (host, float32).
template <class V, class P, class S, class C, WdMode Wd, bool Tail, bool Diag, bool Sr>
inline void adam_lanes_deepspeed(const AdamConsts<V>& c, V g, V p, SrLanes<V, Sr> sr, P* p_ptr,
                                 S* m_ptr, S* v_ptr, C* copy_ptr, bool gamma_defined,
                                 DiagLanes<V>& diag) {
  if constexpr (Wd == WdMode::l2) g = fma(p, c.l, g);
  const V m_old = V::load(m_ptr);
  const V v_old = V::load(v_ptr);
  const V m = Tail ? fma(m_old, c.b1, mul(g, c.w)) : fma(g, c.w, mul(m_old, c.b1));
  const V v = Tail ? fma(v_old, c.b2, mul(mul(g, g), c.c2)) : fma(mul(g, g), c.c2, mul(v_old, c.b2));
  const V den = fma(sqrt(v), c.d, c.e);
  const V update = div(m, den);
  if constexpr (Wd == WdMode::decoupled) p = fma(p, c.k, p);
  p = fma(update, c.s, p);
  store_as(p_ptr, p, sr, detail::sr_param);
  store_copy(copy_ptr, p, sr);
  store_as(m_ptr, m, sr, detail::sr_exp_avg);
  store_as(v_ptr, v, sr, detail::sr_exp_avg_sq);
  if constexpr (Diag) {
    const V den_old = fma(sqrt(v_old), c.d_prev, c.e);
    diag.add(div(den, c.a), div(den_old, c.a_prev), div(c.a, den), gamma_defined);
  }
}

// optax.adam / adamw / amsgrad under jax.jit on CPU (Convention::optax): XLA contracts
// a*b + c into one fused multiply-add and divides by a bias correction as a multiplication
// by its float32 reciprocal. amsgrad keeps the max of the bias-corrected v (optax's
// nu_max); AdamW adds wd*p to the update before scaling by -lr.
// Γ (Diag): den = sqrt(v*R2 + eps_root) + eps (the bias-corrected max with amsgrad), whose
// previous value takes step t-1's R2 (the stored max is already corrected); a = lr*R1
// (host, float32; with Nesterov too: den is the preconditioner either way).
template <class V, class P, class S, class C, WdMode Wd, bool Amsgrad, bool Nesterov, bool Diag,
          bool Sr>
inline void adam_lanes_optax(const AdamConsts<V>& c, V g, V p, SrLanes<V, Sr> sr, P* p_ptr,
                             S* m_ptr, S* v_ptr, S* vmax_ptr, C* copy_ptr, bool gamma_defined,
                             DiagLanes<V>& diag) {
  const V v_old = V::load(v_ptr);
  const V m = fma(c.w, g, mul(c.b1, V::load(m_ptr)));
  const V v = fma(c.c2, mul(g, g), mul(c.b2, v_old));
  V m_hat = mul(m, c.r1);
  if constexpr (Nesterov) m_hat = fma(c.b1, mul(m, c.r1_next), mul(c.w, mul(g, c.r1)));
  V shifted;
  [[maybe_unused]] V shifted_old;
  if constexpr (Amsgrad) {
    const V v_max_old = V::load(vmax_ptr);
    const V v_max = maximum(v_max_old, mul(v, c.r2));  // NaN propagates, as jnp
    store_as(vmax_ptr, v_max, sr, detail::sr_max_exp_avg_sq);
    shifted = add(v_max, c.eps_root);
    if constexpr (Diag) shifted_old = add(v_max_old, c.eps_root);
  } else {
    shifted = fma(v, c.r2, c.eps_root);
    if constexpr (Diag) shifted_old = fma(v_old, c.d_prev, c.eps_root);
  }
  const V den = add(sqrt(shifted), c.e);
  V update = div(m_hat, den);
  if constexpr (Wd == WdMode::decoupled) update = fma(c.l, p, update);
  p = fma(c.s, update, p);
  store_as(p_ptr, p, sr, detail::sr_param);
  store_copy(copy_ptr, p, sr);
  store_as(m_ptr, m, sr, detail::sr_exp_avg);
  store_as(v_ptr, v, sr, detail::sr_exp_avg_sq);
  if constexpr (Diag) {
    const V den_old = add(sqrt(shifted_old), c.e);
    diag.add(div(den, c.a), div(den_old, c.a_prev), div(c.a, den), gamma_defined);
  }
}

// keras.optimizers.Adam / AdamW (Keras 3, jax backend, eager apply_gradients;
// Convention::keras): one rounding per op, no fma; weight decay p - p*wd*lr first; the
// moments as m + (g - m)*(1-b1); the step alpha folds lr and both bias corrections.
// Γ (Diag): den = sqrt(v) + eps (vmax with amsgrad), a = alpha (both bias corrections).
template <class V, class P, class S, class C, WdMode Wd, bool Amsgrad, bool Diag, bool Sr>
inline void adam_lanes_keras(const AdamConsts<V>& c, V g, V p, SrLanes<V, Sr> sr, P* p_ptr,
                             S* m_ptr, S* v_ptr, S* vmax_ptr, C* copy_ptr, bool gamma_defined,
                             DiagLanes<V>& diag) {
  if constexpr (Wd == WdMode::decoupled) p = sub(p, mul(mul(p, c.l), c.lr));
  const V m_old = V::load(m_ptr);
  const V v_old = V::load(v_ptr);
  const V m = add(m_old, mul(sub(g, m_old), c.w));
  const V v = add(v_old, mul(sub(mul(g, g), v_old), c.c2));
  V v_hat = v;
  V v_hat_old = v_old;
  if constexpr (Amsgrad) {
    v_hat_old = V::load(vmax_ptr);
    v_hat = maximum(v_hat_old, v);
    store_as(vmax_ptr, v_hat, sr, detail::sr_max_exp_avg_sq);
  }
  const V den = add(sqrt(v_hat), c.e);
  p = sub(p, div(mul(m, c.alpha), den));
  store_as(p_ptr, p, sr, detail::sr_param);
  store_copy(copy_ptr, p, sr);
  store_as(m_ptr, m, sr, detail::sr_exp_avg);
  store_as(v_ptr, v, sr, detail::sr_exp_avg_sq);
  if constexpr (Diag) {
    const V den_old = add(sqrt(v_hat_old), c.e);
    diag.add(div(den, c.a), div(den_old, c.a_prev), div(c.a, den), gamma_defined);
  }
}

template <class V, class P, class S, class G, class C, WdMode Wd, bool LerpLow, bool Amsgrad,
          bool Diag, Recipe R, bool Sr>
inline void adam_lanes(const AdamConsts<V>& c, std::uint32_t sign_flip,
                       detail::PassOptions pass, bool gamma_defined, SrLanes<V, Sr> sr, P* p_ptr,
                       const G* g_ptr, S* m_ptr, S* v_ptr, S* vmax_ptr, C* copy_ptr,
                       DiagLanes<V>& diag) {
  V g = load_grad<V>(g_ptr, c, pass, sign_flip);
  V p = V::load(p_ptr);
  if constexpr (R == Recipe::deepspeed || R == Recipe::deepspeed_tail) {
    adam_lanes_deepspeed<V, P, S, C, Wd, R == Recipe::deepspeed_tail, Diag>(
        c, g, p, sr, p_ptr, m_ptr, v_ptr, copy_ptr, gamma_defined, diag);
    return;
  }
  if constexpr (R == Recipe::optax || R == Recipe::optax_nesterov) {
    adam_lanes_optax<V, P, S, C, Wd, Amsgrad, R == Recipe::optax_nesterov, Diag>(
        c, g, p, sr, p_ptr, m_ptr, v_ptr, vmax_ptr, copy_ptr, gamma_defined, diag);
    return;
  }
  if constexpr (R == Recipe::keras) {
    adam_lanes_keras<V, P, S, C, Wd, Amsgrad, Diag>(c, g, p, sr, p_ptr, m_ptr, v_ptr, vmax_ptr,
                                                    copy_ptr, gamma_defined, diag);
    return;
  }
  if constexpr (Wd == WdMode::l2) g = fma(p, c.l, g);
  if constexpr (Wd == WdMode::decoupled) p = mul(p, c.k);

  // m = lerp(m, g, W), in torch's two-branch form (W is uniform, chosen on the host).
  V m = V::load(m_ptr);
  const V g_minus_m = sub(g, m);
  m = LerpLow ? fma(c.w, g_minus_m, m) : fma(c.w_less1, g_minus_m, g);

  const V v_old = V::load(v_ptr);
  // torch's scalar tail contracts the other product: (v*B2 then + C2*g*g) compiles to
  // fma(v, B2, C2*g*g) there, fma(C2*g, g, v*B2) in its vector body.
  const V v = R == Recipe::torch_tail ? fma(v_old, c.b2, mul(mul(c.c2, g), g))
                                      : fma(mul(c.c2, g), g, mul(v_old, c.b2));

  V v_hat = v;
  V v_hat_old = v_old;
  if constexpr (Amsgrad) {
    v_hat_old = V::load(vmax_ptr);
    if constexpr (R == Recipe::torch_tail) {
      v_hat = select(less_mask(v_hat_old, v), v, v_hat_old);  // std::max: keeps old on NaN
    } else {
      v_hat = maximum(v_hat_old, v);  // max of the raw v; NaN propagates
    }
    store_as(vmax_ptr, v_hat, sr, detail::sr_max_exp_avg_sq);
  }
  const V den = add(div(sqrt(v_hat), c.d), c.e);
  p = add(p, div(mul(c.s, m), den));

  store_as(p_ptr, p, sr, detail::sr_param);
  store_copy(copy_ptr, p, sr);
  store_as(m_ptr, m, sr, detail::sr_exp_avg);
  store_as(v_ptr, v, sr, detail::sr_exp_avg_sq);

  if constexpr (Diag) {
    const V den_old = add(div(sqrt(v_hat_old), c.d_prev), c.e);
    diag.add(div(den, c.a), div(den_old, c.a_prev), div(c.a, den), gamma_defined);
  }
}

// The vector body starts where `param` is aligned to a whole vector, so its stores
// (and, when the buffers share an alignment, every load) never straddle cache lines;
// the head before it and the tail after it run the same template at one lane.
struct Split {
  std::size_t body_begin, body_end;
};
template <class V, class P>
Split split_for_alignment(const P* param, std::size_t begin, std::size_t end) {
  constexpr std::size_t kBytes = V::kLanes * sizeof(P);
  const auto address = reinterpret_cast<std::uintptr_t>(param + begin);
  std::size_t head = 0;
  if (V::kLanes > 1 && address % sizeof(P) == 0 && address % kBytes != 0) {
    head = (kBytes - address % kBytes) / sizeof(P);
  }
  const std::size_t body_begin = begin + (head < end - begin ? head : end - begin);
  const std::size_t body_end = body_begin + (end - body_begin) / V::kLanes * V::kLanes;
  return {body_begin, body_end};
}

// Pointer arithmetic on an optional buffer (void: there is none).
template <class C>
C* offset_or_null(void* base, std::size_t i) {
  if constexpr (std::is_void_v<C>) {
    return nullptr;
  } else {
    return static_cast<C*>(base) + i;
  }
}

// Elements [from, to) of one tensor of layout L at V's width (to - from is a multiple of it).
template <std::size_t L, class V, WdMode Wd, bool LerpLow, bool Amsgrad, bool Diag, Recipe R,
          bool Sr>
void adam_elements(const AdamScalars& k, const AdamBuffers& b, std::size_t from, std::size_t to,
                   DiagAccum* acc) {
  using T = LayoutTypes<L>;
  using P = typename T::Param;
  using S = typename T::State;
  using G = typename T::Grad;
  using C = typename T::Copy;
  if (from == to) return;
  // Locals, so the compiler need not reload them after every store.
  P* const param = static_cast<P*>(b.param);
  const G* const grad = static_cast<const G*>(b.grad);
  S* const exp_avg = static_cast<S*>(b.exp_avg);
  S* const exp_avg_sq = static_cast<S*>(b.exp_avg_sq);
  S* const max_exp_avg_sq = static_cast<S*>(b.max_exp_avg_sq);
  void* const param_copy = b.param_copy;
  const std::uint32_t sign_flip = k.sign_flip;
  const bool gamma_defined = k.gamma_defined;
  const detail::PassOptions pass = k.pass;
  const AdamConsts<V> c(coeffs_for<typename T::Math>(k));
  SrLanes<V, Sr> sr = sr_lanes<V, Sr>(pass, b.stream, from);
  DiagLanes<V> diag;
  for (std::size_t i = from; i < to; i += V::kLanes, sr.next()) {
    adam_lanes<V, P, S, G, C, Wd, LerpLow, Amsgrad, Diag, R>(
        c, sign_flip, pass, gamma_defined, sr, param + i, grad + i, exp_avg + i,
        exp_avg_sq + i, Amsgrad ? max_exp_avg_sq + i : nullptr,
        offset_or_null<C>(param_copy, i), diag);
  }
  if constexpr (Diag) diag.merge_into(acc);
}

template <std::size_t L, WdMode Wd, bool LerpLow, bool Amsgrad, bool Diag, Recipe R>
void adam_range(const AdamScalars& k, const AdamBuffers& b, std::size_t begin,
                std::size_t end, DiagAccum* acc) {
  using T = LayoutTypes<L>;
  using Body = typename T::Body;
  using One = typename T::One;
  with_rounding<T::kAny16Bit>(k.pass.stochastic, [&](auto stochastic) {
    constexpr bool Sr = decltype(stochastic)::value;
    for_index_halves(begin, end, [&](std::size_t from, std::size_t to) {
      const Split s = split_for_alignment<Body>(static_cast<const typename T::Param*>(b.param),
                                                from, to);
      adam_elements<L, One, Wd, LerpLow, Amsgrad, Diag, R, Sr>(k, b, from, s.body_begin, acc);
      adam_elements<L, Body, Wd, LerpLow, Amsgrad, Diag, R, Sr>(k, b, s.body_begin, s.body_end,
                                                                acc);
      adam_elements<L, One, Wd, LerpLow, Amsgrad, Diag, R, Sr>(k, b, s.body_end, to, acc);
    });
  });
}

template <class V>
struct AdagradConsts {
  V n, l, e, grad_scale, clip_coef, clr, clr_prev;
  template <class T>
  explicit AdagradConsts(const AdagradCoeffs<T>& c)
      : n(V::set1(c.neg_clr)), l(V::set1(c.weight_decay)), e(V::set1(c.eps)),
        grad_scale(V::set1(c.grad_scale)), clip_coef(V::set1(c.clip_coef)), clr(V::set1(c.clr)),
        clr_prev(V::set1(c.prev_clr)) {}
};

template <class V, class P, class S, class G, class C, bool WeightDecay, bool Diag, Recipe R,
          bool Sr>
inline void adagrad_lanes(const AdagradConsts<V>& c, std::uint32_t sign_flip,
                          detail::PassOptions pass, bool gamma_defined, SrLanes<V, Sr> sr,
                          P* p_ptr, const G* g_ptr, S* s_ptr, C* copy_ptr,
                          DiagLanes<V>& diag) {
  V g = load_grad<V>(g_ptr, c, pass, sign_flip);
  V p = V::load(p_ptr);
  if constexpr (WeightDecay) g = fma(p, c.l, g);
  const V s_old = V::load(s_ptr);
  // Keras rounds g*g apart and adds eps under the square root.
  const V s = R == Recipe::keras ? add(s_old, mul(g, g)) : fma(g, g, s_old);
  const V std_dev = R == Recipe::keras ? sqrt(add(s, c.e)) : add(sqrt(s), c.e);
  // DeepSpeedCPUAdagrad adds the quotient times -lr by fma; its scalar loop also stores
  // that product to the grad, so its compiler rounds it apart; torch divides the product.
  if constexpr (R == Recipe::deepspeed) {
    p = fma(div(g, std_dev), c.n, p);
  } else if constexpr (R == Recipe::deepspeed_tail) {
    p = add(mul(div(g, std_dev), c.n), p);
  } else {
    p = add(p, div(mul(c.n, g), std_dev));
  }
  store_as(p_ptr, p, sr, detail::sr_param);
  store_copy(copy_ptr, p, sr);
  store_as(s_ptr, s, sr, detail::sr_state_sum);
  if constexpr (Diag) {  // from each recipe's own std: Keras's eps is under the root
    const V std_old = R == Recipe::keras ? sqrt(add(s_old, c.e)) : add(sqrt(s_old), c.e);
    diag.add(div(std_dev, c.clr), div(std_old, c.clr_prev), div(c.clr, std_dev), gamma_defined);
  }
}

template <std::size_t L, class V, bool WeightDecay, bool Diag, Recipe R, bool Sr>
void adagrad_elements(const AdagradScalars& k, const AdagradBuffers& b, std::size_t from,
                      std::size_t to, DiagAccum* acc) {
  using T = LayoutTypes<L>;
  using P = typename T::Param;
  using S = typename T::State;
  using G = typename T::Grad;
  using C = typename T::Copy;
  if (from == to) return;
  P* const param = static_cast<P*>(b.param);
  const G* const grad = static_cast<const G*>(b.grad);
  S* const state_sum = static_cast<S*>(b.state_sum);
  void* const param_copy = b.param_copy;
  const std::uint32_t sign_flip = k.sign_flip;
  const bool gamma_defined = k.gamma_defined;
  const detail::PassOptions pass = k.pass;
  const AdagradConsts<V> c(coeffs_for<typename T::Math>(k));
  SrLanes<V, Sr> sr = sr_lanes<V, Sr>(pass, b.stream, from);
  DiagLanes<V> diag;
  for (std::size_t i = from; i < to; i += V::kLanes, sr.next()) {
    adagrad_lanes<V, P, S, G, C, WeightDecay, Diag, R>(c, sign_flip, pass, gamma_defined, sr,
                                                    param + i, grad + i, state_sum + i,
                                                    offset_or_null<C>(param_copy, i), diag);
  }
  if constexpr (Diag) diag.merge_into(acc);
}

template <std::size_t L, bool WeightDecay, bool Diag, Recipe R>
void adagrad_range(const AdagradScalars& k, const AdagradBuffers& b, std::size_t begin,
                   std::size_t end, DiagAccum* acc) {
  using T = LayoutTypes<L>;
  using Body = typename T::Body;
  using One = typename T::One;
  with_rounding<T::kAny16Bit>(k.pass.stochastic, [&](auto stochastic) {
    constexpr bool Sr = decltype(stochastic)::value;
    for_index_halves(begin, end, [&](std::size_t from, std::size_t to) {
      const Split s = split_for_alignment<Body>(static_cast<const typename T::Param*>(b.param),
                                                from, to);
      adagrad_elements<L, One, WeightDecay, Diag, R, Sr>(k, b, from, s.body_begin, acc);
      adagrad_elements<L, Body, WeightDecay, Diag, R, Sr>(k, b, s.body_begin, s.body_end, acc);
      adagrad_elements<L, One, WeightDecay, Diag, R, Sr>(k, b, s.body_end, to, acc);
    });
  });
}

// Every layout and combination of options: Adam's index is
// layout * 24 + ((wd * 2 + lerp_low) * 2 + amsgrad) * 2 + diag, AdaGrad's
// layout * 4 + wd * 2 + diag.
// A plain array in a local struct, not std::array: an unoptimised build emits
// std::array's members as weak symbols shared by every ISA's file, and the linker
// could keep the AVX-512 copy for all of them.
constexpr std::size_t kAdamOptions = 24;
constexpr std::size_t kAdagradOptions = 4;

template <class Fn, std::size_t N>
struct FnTable {
  Fn fn[N];
};
template <std::size_t... I>
constexpr FnTable<detail::AdamRangeFn, sizeof...(I)> adam_variants(std::index_sequence<I...>) {
  return {{&adam_range<I / kAdamOptions, static_cast<WdMode>(I % kAdamOptions / 8),
                       (I / 4) % 2 == 1, (I / 2) % 2 == 1, I % 2 == 1, Recipe::torch_body>...}};
}
template <std::size_t... I>
constexpr FnTable<detail::AdagradRangeFn, sizeof...(I)> adagrad_variants(
    std::index_sequence<I...>) {
  return {{&adagrad_range<I / kAdagradOptions, (I / 2) % 2 == 1, I % 2 == 1,
                          Recipe::torch_body>...}};
}
// The other recipes, for the all-float32 layout (0) only: index
// (recipe - 1) * options + the options' index above.
template <std::size_t... I>
constexpr FnTable<detail::AdamRangeFn, sizeof...(I)> adam_recipe_variants(
    std::index_sequence<I...>) {
  return {{&adam_range<0, static_cast<WdMode>(I % kAdamOptions / 8), (I / 4) % 2 == 1,
                       (I / 2) % 2 == 1, I % 2 == 1,
                       static_cast<Recipe>(I / kAdamOptions + 1)>...}};
}
template <std::size_t... I>
constexpr FnTable<detail::AdagradRangeFn, sizeof...(I)> adagrad_recipe_variants(
    std::index_sequence<I...>) {
  return {{&adagrad_range<0, (I / 2) % 2 == 1, I % 2 == 1,
                          static_cast<Recipe>(I / kAdagradOptions + 1)>...}};
}

// ---- SGD (torch.optim.SGD(fused=True)'s vector recipe) and Lion. The same-dtype layouts
// only: one storage type T for params, grads and state.

template <class Math>
const detail::SgdCoeffs<Math>& coeffs_for(const detail::SgdScalars& k) {
  if constexpr (std::is_same_v<Math, double>) {
    return k.d;
  } else {
    return k.f;
  }
}
template <class Math>
const detail::LionCoeffs<Math>& coeffs_for(const detail::LionScalars& k) {
  if constexpr (std::is_same_v<Math, double>) {
    return k.d;
  } else {
    return k.f;
  }
}

template <class V>
struct SgdConsts {
  V weight_decay, momentum, one_minus_dampening, neg_lr, grad_scale, clip_coef;
  template <class T>
  explicit SgdConsts(const detail::SgdCoeffs<T>& c)
      : weight_decay(V::set1(c.weight_decay)), momentum(V::set1(c.momentum)),
        one_minus_dampening(V::set1(c.one_minus_dampening)), neg_lr(V::set1(c.neg_lr)),
        grad_scale(V::set1(c.grad_scale)), clip_coef(V::set1(c.clip_coef)) {}
};

// One vector of SGD. The momentum buffer keeps the rounded value; the update uses the
// unrounded one (as torch's 16-bit kernel does). TorchTail: torch fused's scalar loop,
// whose compiler fuses the other product of m*M + g*D: fma(m, M, g*D).
template <class V, class T, bool WeightDecay, detail::SgdMomentum Momentum, bool Nesterov,
          bool TorchTail, bool Sr>
inline void sgd_lanes(const SgdConsts<V>& c, std::uint32_t sign_flip, detail::PassOptions pass,
                      SrLanes<V, Sr> sr, T* p_ptr, const T* g_ptr, T* m_ptr) {
  V g = load_grad<V>(g_ptr, c, pass, sign_flip);
  V p = V::load(p_ptr);
  if constexpr (WeightDecay) g = fma(p, c.weight_decay, g);
  if constexpr (Momentum != detail::SgdMomentum::none) {
    V m = g;  // the first step: the buffer starts as the gradient, undamped
    if constexpr (Momentum == detail::SgdMomentum::running) {
      m = TorchTail ? fma(V::load(m_ptr), c.momentum, mul(g, c.one_minus_dampening))
                    : fma(c.one_minus_dampening, g, mul(V::load(m_ptr), c.momentum));
    }
    store_as(m_ptr, m, sr, detail::sr_exp_avg);
    g = Nesterov ? fma(m, c.momentum, g) : m;
  }
  p = fma(g, c.neg_lr, p);
  store_as(p_ptr, p, sr, detail::sr_param);
}

template <std::size_t L, class V, bool WeightDecay, detail::SgdMomentum Momentum, bool Nesterov,
          bool TorchTail, bool Sr>
void sgd_elements(const detail::SgdScalars& k, const SgdBuffers& b, std::size_t from,
                  std::size_t to) {
  using T = typename LayoutTypes<L>::Param;
  if (from == to) return;
  T* const param = static_cast<T*>(b.param);
  const T* const grad = static_cast<const T*>(b.grad);
  T* const momentum_buffer = static_cast<T*>(b.momentum_buffer);
  const std::uint32_t sign_flip = k.sign_flip;
  const detail::PassOptions pass = k.pass;
  const SgdConsts<V> c(coeffs_for<typename LayoutTypes<L>::Math>(k));
  SrLanes<V, Sr> sr = sr_lanes<V, Sr>(pass, b.stream, from);
  for (std::size_t i = from; i < to; i += V::kLanes, sr.next()) {
    sgd_lanes<V, T, WeightDecay, Momentum, Nesterov, TorchTail>(
        c, sign_flip, pass, sr, param + i, grad + i,
        Momentum == detail::SgdMomentum::none ? nullptr : momentum_buffer + i);
  }
}

template <std::size_t L, bool WeightDecay, detail::SgdMomentum Momentum, bool Nesterov,
          bool TorchTail>
void sgd_range(const detail::SgdScalars& k, const SgdBuffers& b, std::size_t begin,
               std::size_t end, DiagAccum*) {
  using T = LayoutTypes<L>;
  with_rounding<T::kAny16Bit>(k.pass.stochastic, [&](auto stochastic) {
    constexpr bool Sr = decltype(stochastic)::value;
    for_index_halves(begin, end, [&](std::size_t from, std::size_t to) {
      const Split s = split_for_alignment<typename T::Body>(
          static_cast<const typename T::Param*>(b.param), from, to);
      sgd_elements<L, typename T::One, WeightDecay, Momentum, Nesterov, TorchTail, Sr>(
          k, b, from, s.body_begin);
      sgd_elements<L, typename T::Body, WeightDecay, Momentum, Nesterov, TorchTail, Sr>(
          k, b, s.body_begin, s.body_end);
      sgd_elements<L, typename T::One, WeightDecay, Momentum, Nesterov, TorchTail, Sr>(
          k, b, s.body_end, to);
    });
  });
}

template <class V>
struct LionConsts {
  V beta1, one_minus_beta1, beta2, one_minus_beta2, lr, neg_lr, decay_factor, grad_scale,
      clip_coef;
  template <class T>
  explicit LionConsts(const detail::LionCoeffs<T>& c)
      : beta1(V::set1(c.beta1)), one_minus_beta1(V::set1(c.one_minus_beta1)),
        beta2(V::set1(c.beta2)), one_minus_beta2(V::set1(c.one_minus_beta2)),
        lr(V::set1(c.lr)), neg_lr(V::set1(c.neg_lr)), decay_factor(V::set1(c.decay_factor)),
        grad_scale(V::set1(c.grad_scale)), clip_coef(V::set1(c.clip_coef)) {}
};

// sign(x): -1, +1, a zero keeps its sign, NaN stays NaN. Scaling by 2^252 (2^1944 for
// double, in two exact-or-overflowing multiplies) takes every non-zero magnitude,
// subnormals included, to >= 1; the clamp to [-1, 1] then leaves only +-1.
template <class Lane, class V>
V sign_of(V x) {
  constexpr Lane kScale = std::is_same_v<Lane, double> ? 0x1p972 : 0x1p126f;
  const V big = mul(mul(x, V::set1(kScale)), V::set1(kScale));
  // keep_min(acc, y) is y < acc ? y : acc, so a NaN acc is kept.
  return keep_max(keep_min(big, V::set1(Lane(1))), V::set1(Lane(-1)));
}

// One vector of Lion. Paper: c = b1*m + (1-b1)*g; p = p*(1 - lr*wd) - lr*sign(c);
// m = b2*m + (1-b2)*g, each product and sum rounded. DeepSpeed: the same with fused
// multiply-adds and the update -copysign(lr, c) (float arithmetic only).
template <class V, class T, bool DeepSpeed, bool Decay, bool Sr>
inline void lion_lanes(const LionConsts<V>& c, std::uint32_t sign_flip, detail::PassOptions pass,
                       SrLanes<V, Sr> sr, T* p_ptr, const T* g_ptr, T* m_ptr) {
  const V g = load_grad<V>(g_ptr, c, pass, sign_flip);
  V p = V::load(p_ptr);
  V m = V::load(m_ptr);
  if constexpr (DeepSpeed && !std::is_same_v<T, double>) {
    const V interp = fma(g, c.one_minus_beta1, mul(m, c.beta1));
    using U = typename V::Bits;
    // -lr with interp's sign bit flipped in: -copysign(lr, interp), NaN's sign included.
    const V update = from_bits(
        bit_xor(bit_and(as_bits(interp), U::set1(0x80000000u)), as_bits(c.neg_lr)));
    p = Decay ? fma(p, c.decay_factor, update) : add(p, update);
    m = fma(g, c.one_minus_beta2, mul(m, c.beta2));
  } else {
    const V interp = add(mul(c.beta1, m), mul(c.one_minus_beta1, g));
    if constexpr (Decay) p = mul(p, c.decay_factor);
    using Lane = std::conditional_t<std::is_same_v<T, double>, double, float>;
    p = sub(p, mul(c.lr, sign_of<Lane>(interp)));
    m = add(mul(c.beta2, m), mul(c.one_minus_beta2, g));
  }
  store_as(p_ptr, p, sr, detail::sr_param);
  store_as(m_ptr, m, sr, detail::sr_exp_avg);
}

template <std::size_t L, class V, bool DeepSpeed, bool Decay, bool Sr>
void lion_elements(const detail::LionScalars& k, const LionBuffers& b, std::size_t from,
                   std::size_t to) {
  using T = typename LayoutTypes<L>::Param;
  if (from == to) return;
  T* const param = static_cast<T*>(b.param);
  const T* const grad = static_cast<const T*>(b.grad);
  T* const exp_avg = static_cast<T*>(b.exp_avg);
  const std::uint32_t sign_flip = k.sign_flip;
  const detail::PassOptions pass = k.pass;
  const LionConsts<V> c(coeffs_for<typename LayoutTypes<L>::Math>(k));
  SrLanes<V, Sr> sr = sr_lanes<V, Sr>(pass, b.stream, from);
  for (std::size_t i = from; i < to; i += V::kLanes, sr.next()) {
    lion_lanes<V, T, DeepSpeed, Decay>(c, sign_flip, pass, sr, param + i, grad + i,
                                       exp_avg + i);
  }
}

template <std::size_t L, bool DeepSpeed, bool Decay>
void lion_range(const detail::LionScalars& k, const LionBuffers& b, std::size_t begin,
                std::size_t end, DiagAccum*) {
  using T = LayoutTypes<L>;
  with_rounding<T::kAny16Bit>(k.pass.stochastic, [&](auto stochastic) {
    constexpr bool Sr = decltype(stochastic)::value;
    for_index_halves(begin, end, [&](std::size_t from, std::size_t to) {
      const Split s = split_for_alignment<typename T::Body>(
          static_cast<const typename T::Param*>(b.param), from, to);
      lion_elements<L, typename T::One, DeepSpeed, Decay, Sr>(k, b, from, s.body_begin);
      lion_elements<L, typename T::Body, DeepSpeed, Decay, Sr>(k, b, s.body_begin, s.body_end);
      lion_elements<L, typename T::One, DeepSpeed, Decay, Sr>(k, b, s.body_end, to);
    });
  });
}

// SGD's index: layout * 24 + ((wd * 3 + momentum) * 2 + nesterov) * 2 + torch_tail; Lion's:
// layout * 4 + deepspeed * 2 + decay. Same-dtype layouts only.
constexpr std::size_t kSgdOptions = 24;
constexpr std::size_t kLionOptions = 4;

template <std::size_t... I>
constexpr FnTable<detail::SgdRangeFn, sizeof...(I)> sgd_variants(std::index_sequence<I...>) {
  return {{&sgd_range<I / kSgdOptions, (I % kSgdOptions) / 12 == 1,
                      static_cast<detail::SgdMomentum>((I / 4) % 3), (I / 2) % 2 == 1,
                      I % 2 == 1>...}};
}
template <std::size_t... I>
constexpr FnTable<detail::LionRangeFn, sizeof...(I)> lion_variants(std::index_sequence<I...>) {
  return {{&lion_range<I / kLionOptions, (I / 2) % 2 == 1, I % 2 == 1>...}};
}

}  // namespace

// recipe != torch_body: layout must be 0 (dispatch checks the convention's layout first).
detail::AdamRangeFn adam_kernel(std::size_t layout, WdMode wd, bool lerp_low, bool amsgrad,
                                bool diag, Recipe recipe) {
  static constexpr auto kVariants =
      adam_variants(std::make_index_sequence<detail::kLayoutCount * kAdamOptions>{});
  static constexpr auto kRecipeVariants = adam_recipe_variants(
      std::make_index_sequence<(detail::kRecipeCount - 1) * kAdamOptions>{});
  const std::size_t option = ((static_cast<std::size_t>(wd) * 2 + lerp_low) * 2 + amsgrad) * 2 +
                             diag;
  if (recipe != Recipe::torch_body) {
    return kRecipeVariants.fn[(static_cast<std::size_t>(recipe) - 1) * kAdamOptions + option];
  }
  return kVariants.fn[layout * kAdamOptions + option];
}

detail::AdagradRangeFn adagrad_kernel(std::size_t layout, bool weight_decay, bool diag,
                                      Recipe recipe) {
  static constexpr auto kVariants =
      adagrad_variants(std::make_index_sequence<detail::kLayoutCount * kAdagradOptions>{});
  static constexpr auto kRecipeVariants = adagrad_recipe_variants(
      std::make_index_sequence<(detail::kRecipeCount - 1) * kAdagradOptions>{});
  const std::size_t option = static_cast<std::size_t>(weight_decay) * 2 + diag;
  if (recipe != Recipe::torch_body) {
    return kRecipeVariants.fn[(static_cast<std::size_t>(recipe) - 1) * kAdagradOptions + option];
  }
  return kVariants.fn[layout * kAdagradOptions + option];
}

detail::SgdRangeFn sgd_kernel(std::size_t layout, bool weight_decay, detail::SgdMomentum momentum,
                              bool nesterov, bool torch_tail) {
  static constexpr auto kVariants =
      sgd_variants(std::make_index_sequence<detail::kSameDtypeLayouts * kSgdOptions>{});
  return kVariants.fn[layout * kSgdOptions +
                      ((static_cast<std::size_t>(weight_decay) * 3 +
                        static_cast<std::size_t>(momentum)) * 2 +
                       nesterov) * 2 +
                      torch_tail];
}

detail::LionRangeFn lion_kernel(std::size_t layout, LionConvention convention, bool decay) {
  static constexpr auto kVariants =
      lion_variants(std::make_index_sequence<detail::kSameDtypeLayouts * kLionOptions>{});
  return kVariants.fn[layout * kLionOptions +
                      static_cast<std::size_t>(convention == LionConvention::deepspeed) * 2 +
                      decay];
}

}  // namespace adamcore::ADAMCORE_NS
