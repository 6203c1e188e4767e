// THE ONLY COPY OF THE OPTIMIZER MATH.
//
// Included once per ISA by kernels_<isa>.cpp after it has defined ADAMCORE_NS and the
// alias `Vec` (that ISA's vector type). The vector body and the tail run the same
// template, the tail at one lane (VecScalar), so every element gets the same bits
// whatever its position, the buffer's alignment, the ISA or the thread split.
// The arithmetic is docs/numerics.md's canonical recipe; every operation below is a
// correctly rounded IEEE operation (no estimates, no contraction: -ffp-contract=off).

#include <cstddef>
#include <cstdint>
#include <utility>

#include "kernel_api.h"

namespace adamcore::ADAMCORE_NS {
namespace {

using detail::AdagradScalars;
using detail::AdamScalars;
using detail::DiagAccum;
using detail::WdMode;

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
    DiagAccum mine;
    mine.negative = negative;
    mine.undefined = undefined;
    mine.gamma_min = reduce_min(gamma_min);
    mine.lr_min = reduce_min(lr_min);
    mine.lr_max = reduce_max(lr_max);
    detail::diag_merge(acc, mine);
  }
};

template <class V>
struct AdamConsts {
  V w, w_less1, b2, c2, d, e, s, l, k;
  // diagnostics
  V a, a_prev, d_prev;
  explicit AdamConsts(const AdamScalars& c)
      : w(V::set1(c.one_minus_beta1)), w_less1(V::set1(c.one_minus_beta1_less1)),
        b2(V::set1(c.beta2)), c2(V::set1(c.one_minus_beta2)), d(V::set1(c.bc2_sqrt)),
        e(V::set1(c.eps)), s(V::set1(c.neg_step_size)), l(V::set1(c.weight_decay)),
        k(V::set1(c.decay_factor)), a(V::set1(c.step_size)),
        a_prev(V::set1(c.prev_step_size)), d_prev(V::set1(c.prev_bc2_sqrt)) {}
};

// One vector (or one element) of Adam / AdamW / AMSGrad.
template <class V, WdMode Wd, bool LerpLow, bool Amsgrad, bool Diag>
inline void adam_lanes(const AdamConsts<V>& c, std::uint32_t sign_flip, bool gamma_defined,
                       float* p_ptr, const float* g_ptr, float* m_ptr, float* v_ptr,
                       float* vmax_ptr, DiagLanes<V>& diag) {
  V g = flip_sign(V::load(g_ptr), sign_flip);
  V p = V::load(p_ptr);
  if constexpr (Wd == WdMode::l2) g = fma(p, c.l, g);
  if constexpr (Wd == WdMode::decoupled) p = mul(p, c.k);

  // m = lerp(m, g, W), in torch's two-branch form (W is uniform, chosen on the host).
  V m = V::load(m_ptr);
  const V g_minus_m = sub(g, m);
  m = LerpLow ? fma(c.w, g_minus_m, m) : fma(c.w_less1, g_minus_m, g);

  const V v_old = V::load(v_ptr);
  const V v = fma(mul(c.c2, g), g, mul(v_old, c.b2));

  V v_hat = v;
  V v_hat_old = v_old;
  if constexpr (Amsgrad) {
    v_hat_old = V::load(vmax_ptr);
    v_hat = maximum(v_hat_old, v);  // max of the raw v; NaN propagates
    store(vmax_ptr, v_hat);
  }
  const V den = add(div(sqrt(v_hat), c.d), c.e);
  p = add(p, div(mul(c.s, m), den));

  store(p_ptr, p);
  store(m_ptr, m);
  store(v_ptr, v);

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
inline Split split_for_alignment(const float* param, std::size_t begin, std::size_t end) {
  constexpr std::size_t kBytes = Vec::kLanes * sizeof(float);
  const auto address = reinterpret_cast<std::uintptr_t>(param + begin);
  std::size_t head = 0;
  if (Vec::kLanes > 1 && address % sizeof(float) == 0 && address % kBytes != 0) {
    head = (kBytes - address % kBytes) / sizeof(float);
  }
  const std::size_t body_begin = begin + (head < end - begin ? head : end - begin);
  const std::size_t body_end = body_begin + (end - body_begin) / Vec::kLanes * Vec::kLanes;
  return {body_begin, body_end};
}

// Elements [from, to) of one tensor at V's width (to - from is a multiple of it).
template <class V, WdMode Wd, bool LerpLow, bool Amsgrad, bool Diag>
void adam_elements(const AdamScalars& k, const AdamBuffers& b, std::size_t from, std::size_t to,
                   DiagAccum* acc) {
  if (from == to) return;
  // Locals, so the compiler need not reload them after every store.
  float* const param = b.param;
  const float* const grad = b.grad;
  float* const exp_avg = b.exp_avg;
  float* const exp_avg_sq = b.exp_avg_sq;
  float* const max_exp_avg_sq = b.max_exp_avg_sq;
  const std::uint32_t sign_flip = k.sign_flip;
  const bool gamma_defined = k.gamma_defined;
  const AdamConsts<V> c(k);
  DiagLanes<V> diag;
  for (std::size_t i = from; i < to; i += V::kLanes) {
    adam_lanes<V, Wd, LerpLow, Amsgrad, Diag>(
        c, sign_flip, gamma_defined, param + i, grad + i, exp_avg + i, exp_avg_sq + i,
        Amsgrad ? max_exp_avg_sq + i : nullptr, diag);
  }
  if constexpr (Diag) diag.merge_into(acc);
}

template <WdMode Wd, bool LerpLow, bool Amsgrad, bool Diag>
void adam_range(const AdamScalars& k, const AdamBuffers& b, std::size_t begin,
                std::size_t end, DiagAccum* acc) {
  const Split s = split_for_alignment(b.param, begin, end);
  adam_elements<VecScalar, Wd, LerpLow, Amsgrad, Diag>(k, b, begin, s.body_begin, acc);
  adam_elements<Vec, Wd, LerpLow, Amsgrad, Diag>(k, b, s.body_begin, s.body_end, acc);
  adam_elements<VecScalar, Wd, LerpLow, Amsgrad, Diag>(k, b, s.body_end, end, acc);
}

template <class V>
struct AdagradConsts {
  V n, l, e, clr, clr_prev;
  explicit AdagradConsts(const AdagradScalars& c)
      : n(V::set1(c.neg_clr)), l(V::set1(c.weight_decay)), e(V::set1(c.eps)),
        clr(V::set1(c.clr)), clr_prev(V::set1(c.prev_clr)) {}
};

template <class V, bool WeightDecay, bool Diag>
inline void adagrad_lanes(const AdagradConsts<V>& c, std::uint32_t sign_flip,
                          bool gamma_defined, float* p_ptr, const float* g_ptr, float* s_ptr,
                          DiagLanes<V>& diag) {
  V g = flip_sign(V::load(g_ptr), sign_flip);
  V p = V::load(p_ptr);
  if constexpr (WeightDecay) g = fma(p, c.l, g);
  const V s_old = V::load(s_ptr);
  const V s = fma(g, g, s_old);
  const V std_dev = add(sqrt(s), c.e);
  p = add(p, div(mul(c.n, g), std_dev));
  store(p_ptr, p);
  store(s_ptr, s);
  if constexpr (Diag) {
    const V std_old = add(sqrt(s_old), c.e);
    diag.add(div(std_dev, c.clr), div(std_old, c.clr_prev), div(c.clr, std_dev), gamma_defined);
  }
}

template <class V, bool WeightDecay, bool Diag>
void adagrad_elements(const AdagradScalars& k, const AdagradBuffers& b, std::size_t from,
                      std::size_t to, DiagAccum* acc) {
  if (from == to) return;
  float* const param = b.param;
  const float* const grad = b.grad;
  float* const state_sum = b.state_sum;
  const std::uint32_t sign_flip = k.sign_flip;
  const bool gamma_defined = k.gamma_defined;
  const AdagradConsts<V> c(k);
  DiagLanes<V> diag;
  for (std::size_t i = from; i < to; i += V::kLanes) {
    adagrad_lanes<V, WeightDecay, Diag>(c, sign_flip, gamma_defined, param + i, grad + i,
                                        state_sum + i, diag);
  }
  if constexpr (Diag) diag.merge_into(acc);
}

template <bool WeightDecay, bool Diag>
void adagrad_range(const AdagradScalars& k, const AdagradBuffers& b, std::size_t begin,
                   std::size_t end, DiagAccum* acc) {
  const Split s = split_for_alignment(b.param, begin, end);
  adagrad_elements<VecScalar, WeightDecay, Diag>(k, b, begin, s.body_begin, acc);
  adagrad_elements<Vec, WeightDecay, Diag>(k, b, s.body_begin, s.body_end, acc);
  adagrad_elements<VecScalar, WeightDecay, Diag>(k, b, s.body_end, end, acc);
}

// Every combination of options, indexed ((wd * 2 + lerp_low) * 2 + amsgrad) * 2 + diag.
// A plain array in a local struct, not std::array: an unoptimised build emits
// std::array's members as weak symbols shared by every ISA's file, and the linker
// could keep the AVX-512 copy for all of them.
template <class Fn, std::size_t N>
struct FnTable {
  Fn fn[N];
};
template <std::size_t... I>
constexpr FnTable<detail::AdamRangeFn, sizeof...(I)> adam_variants(std::index_sequence<I...>) {
  return {{&adam_range<static_cast<WdMode>(I / 8), (I / 4) % 2 == 1, (I / 2) % 2 == 1,
                       I % 2 == 1>...}};
}
template <std::size_t... I>
constexpr FnTable<detail::AdagradRangeFn, sizeof...(I)> adagrad_variants(
    std::index_sequence<I...>) {
  return {{&adagrad_range<(I / 2) == 1, I % 2 == 1>...}};
}

}  // namespace

detail::AdamRangeFn adam_kernel(WdMode wd, bool lerp_low, bool amsgrad, bool diag) {
  static constexpr auto kVariants = adam_variants(std::make_index_sequence<24>{});
  const std::size_t index =
      ((static_cast<std::size_t>(wd) * 2 + lerp_low) * 2 + amsgrad) * 2 + diag;
  return kVariants.fn[index];
}

detail::AdagradRangeFn adagrad_kernel(bool weight_decay, bool diag) {
  static constexpr auto kVariants = adagrad_variants(std::make_index_sequence<4>{});
  return kVariants.fn[static_cast<std::size_t>(weight_decay) * 2 + diag];
}

}  // namespace adamcore::ADAMCORE_NS
