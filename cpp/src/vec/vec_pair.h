// Two vectors as one of twice the width: the vector body of the layouts with bfloat16
// buffers on ISAs whose vector type stores two vectors of bfloat16 at once (one pack, one
// full-width store: store_pair / store_stochastic_pair, declared by kStoresBf16Pairs).
// Every other operation works on both halves lane by lane, so each element gets the
// bits it gets at the single vector's width (and from the scalar ISA).
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "kernel_api.h"

namespace adamcore::ADAMCORE_NS {

// Whether V declares store_pair for bfloat16 (static constexpr bool kStoresBf16Pairs).
template <class V, class = void>
struct StoresBf16Pairs : std::false_type {};
template <class V>
struct StoresBf16Pairs<V, std::void_t<decltype(V::kStoresBf16Pairs)>>
    : std::bool_constant<V::kStoresBf16Pairs> {};

template <class U>
struct PairBits {
  static constexpr std::size_t kLanes = 2 * U::kLanes;
  U lo, hi;
  static PairBits set1(std::uint32_t v) { return {U::set1(v), U::set1(v)}; }
  static PairBits iota(std::uint32_t start) {
    return {U::iota(start), U::iota(start + static_cast<std::uint32_t>(U::kLanes))};
  }
};
template <class U>
PairBits<U> add(PairBits<U> a, PairBits<U> b) { return {add(a.lo, b.lo), add(a.hi, b.hi)}; }
template <class U>
PairBits<U> mul_lo(PairBits<U> a, PairBits<U> b) { return {mul_lo(a.lo, b.lo), mul_lo(a.hi, b.hi)}; }
template <class U>
PairBits<U> bit_xor(PairBits<U> a, PairBits<U> b) { return {bit_xor(a.lo, b.lo), bit_xor(a.hi, b.hi)}; }
template <class U>
PairBits<U> bit_and(PairBits<U> a, PairBits<U> b) { return {bit_and(a.lo, b.lo), bit_and(a.hi, b.hi)}; }
template <class U>
PairBits<U> bit_or(PairBits<U> a, PairBits<U> b) { return {bit_or(a.lo, b.lo), bit_or(a.hi, b.hi)}; }
template <int N, class U>
PairBits<U> shift_right(PairBits<U> a) {
  return {shift_right<N>(a.lo), shift_right<N>(a.hi)};
}

template <class V>
struct Pair {
  static constexpr std::size_t kLanes = 2 * V::kLanes;
  using Bits = PairBits<typename V::Bits>;
  V lo, hi;
  template <class T>
  static Pair load(const T* p) {
    return {V::load(p), V::load(p + V::kLanes)};
  }
  static Pair set1(float v) { return {V::set1(v), V::set1(v)}; }
};

template <class T, class V>
void store(T* p, Pair<V> a) {
  store(p, a.lo);
  store(p + V::kLanes, a.hi);
}
template <class V>
void store(detail::Bf16* p, Pair<V> a) {
  store_pair(p, a.lo, a.hi);
}
template <class V>
void store_stochastic(detail::Bf16* p, Pair<V> a, typename Pair<V>::Bits r) {
  store_stochastic_pair(p, a.lo, a.hi, r.lo, r.hi);
}

template <class V>
Pair<V> add(Pair<V> a, Pair<V> b) { return {add(a.lo, b.lo), add(a.hi, b.hi)}; }
template <class V>
Pair<V> sub(Pair<V> a, Pair<V> b) { return {sub(a.lo, b.lo), sub(a.hi, b.hi)}; }
template <class V>
Pair<V> mul(Pair<V> a, Pair<V> b) { return {mul(a.lo, b.lo), mul(a.hi, b.hi)}; }
template <class V>
Pair<V> div(Pair<V> a, Pair<V> b) { return {div(a.lo, b.lo), div(a.hi, b.hi)}; }
template <class V>
Pair<V> sqrt(Pair<V> a) { return {sqrt(a.lo), sqrt(a.hi)}; }
template <class V>
Pair<V> fma(Pair<V> a, Pair<V> b, Pair<V> c) { return {fma(a.lo, b.lo, c.lo), fma(a.hi, b.hi, c.hi)}; }
template <class V>
Pair<V> flip_sign(Pair<V> a, std::uint32_t mask) { return {flip_sign(a.lo, mask), flip_sign(a.hi, mask)}; }
template <class V>
Pair<V> maximum(Pair<V> a, Pair<V> b) { return {maximum(a.lo, b.lo), maximum(a.hi, b.hi)}; }
template <class V>
Pair<V> keep_min(Pair<V> acc, Pair<V> x) { return {keep_min(acc.lo, x.lo), keep_min(acc.hi, x.hi)}; }
template <class V>
Pair<V> keep_max(Pair<V> acc, Pair<V> x) { return {keep_max(acc.lo, x.lo), keep_max(acc.hi, x.hi)}; }
template <class V>
std::uint32_t count_negative(Pair<V> a) { return count_negative(a.lo) + count_negative(a.hi); }
template <class V>
std::uint32_t count_nan(Pair<V> a) { return count_nan(a.lo) + count_nan(a.hi); }
// (The accumulators hold no NaN, and -0 was made +0, so the order of the halves is moot.)
template <class V>
float reduce_min(Pair<V> a) {
  const float lo = reduce_min(a.lo), hi = reduce_min(a.hi);
  return hi < lo ? hi : lo;
}
template <class V>
float reduce_max(Pair<V> a) {
  const float lo = reduce_max(a.lo), hi = reduce_max(a.hi);
  return hi > lo ? hi : lo;
}
template <class V>
typename Pair<V>::Bits as_bits(Pair<V> a) { return {as_bits(a.lo), as_bits(a.hi)}; }
template <class U>
auto from_bits(PairBits<U> b) -> Pair<decltype(from_bits(b.lo))> {
  return {from_bits(b.lo), from_bits(b.hi)};
}
template <class U>
auto to_float(PairBits<U> b) -> Pair<decltype(to_float(b.lo))> {
  return {to_float(b.lo), to_float(b.hi)};
}
template <class V>
Pair<V> trunc(Pair<V> a) { return {trunc(a.lo), trunc(a.hi)}; }
template <class V>
typename Pair<V>::Bits nan_mask(Pair<V> a) { return {nan_mask(a.lo), nan_mask(a.hi)}; }
template <class V>
typename Pair<V>::Bits less_mask(Pair<V> a, Pair<V> b) {
  return {less_mask(a.lo, b.lo), less_mask(a.hi, b.hi)};
}
template <class V>
Pair<V> select(typename Pair<V>::Bits mask, Pair<V> if_set, Pair<V> if_clear) {
  return {select(mask.lo, if_set.lo, if_clear.lo), select(mask.hi, if_set.hi, if_clear.hi)};
}

}  // namespace adamcore::ADAMCORE_NS
