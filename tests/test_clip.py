"""The gradient norm and clip_grad_norm (docs/numerics.md, "The gradient norm").

- the norm's bits are identical on every ISA, for 1/2/4 threads, and for any split of
  the grads into calls (GradNorm) in any order;
- the norm against the exact value (integer arithmetic) and math.fsum;
- against torch.nn.utils.clip_grad_norm_: the norm's distance in ulps (reported), the
  coefficient (torch's own arithmetic on our norm), the clipped grads bit for bit;
- NaN/Inf, error_if_nonfinite, argument checks that write nothing.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

import adamcore

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = [np.dtype(np.float32), np.dtype(np.float64), BF16, np.dtype(np.float16)]
NORM_TYPES = [2.0, 1.0, math.inf, 3.0, 0.5]
SIZES = [0, 1, 7, 31, 33, 4095, 4096, 4097, 10_000, 70_001]


def grads_of(rng, dtype, sizes, scale=1.0, specials=False):
    out = []
    for n in sizes:
        x = rng.standard_normal(n) * scale
        if specials and n:
            pick = rng.integers(0, 50, n)
            x[pick == 0] = 0.0
            x[pick == 1] = -0.0
            x[pick == 2] = 1e-40 if dtype != np.float16 else 1e-7
            x[pick == 3] = 3e37 if dtype in (np.float32, np.float64, BF16) else 6e4
        out.append(x.astype(dtype))
    return out


def bits(x: float) -> int:
    return int(np.float64(x).view(np.uint64))


@pytest.fixture
def threads():
    before = adamcore.get_num_threads(), adamcore.get_parallel_threshold()

    def use(n):
        adamcore.set_num_threads(n)
        adamcore.set_parallel_threshold(1 if n > 1 else 2**64 - 1)

    yield use
    adamcore.set_num_threads(before[0])
    adamcore.set_parallel_threshold(before[1])


# ---------------------------------------------------------------- reproducibility
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("specials", [False, True])
def test_norm_bits_identical_across_isas_and_threads(dtype, specials, threads):
    rng = np.random.default_rng(1)
    grads = grads_of(rng, dtype, SIZES, 2.0, specials)
    for p in NORM_TYPES:
        threads(1)
        with adamcore.use_isa("scalar"):
            want = [bits(adamcore.grad_norm(g, p)) for g in grads]
            want_all = bits(adamcore.grad_norm(grads, p))
        for isa in adamcore.available_isas():
            with adamcore.use_isa(isa):
                for n in (1, 2, 4):
                    threads(n)
                    assert bits(adamcore.grad_norm(grads, p)) == want_all, (isa, n, p)
                    got = [bits(adamcore.grad_norm(g, p)) for g in grads]
                    assert got == want, (isa, n, p)


@pytest.mark.parametrize("p", NORM_TYPES)
def test_norm_independent_of_split_and_order(p, threads):
    """Any split of the list into calls (GradNorm.add), in any order, merged in any
    order, gives one call's bits; so does any permutation of one call's list."""
    rng = np.random.default_rng(2)
    grads = []
    for i in range(30):
        dtype = DTYPES[i % 4]
        grads += grads_of(rng, dtype, [int(rng.integers(0, 20_000))], 0.01 * (i + 1), i % 7 == 0)
    threads(1)
    with adamcore.use_isa("scalar"):
        want = bits(adamcore.grad_norm(grads, p))
    shuffler = random.Random(3)
    isas = adamcore.available_isas()
    for trial in range(12):
        threads(1 + trial % 3)
        with adamcore.use_isa(isas[trial % len(isas)]):
            order = grads[:]
            shuffler.shuffle(order)
            assert bits(adamcore.grad_norm(order, p)) == want
            accs, at = [], 0
            while at < len(order):
                k = shuffler.randint(1, 7)
                acc = adamcore.GradNorm(p)
                acc.add(order[at:at + k])
                accs.append(acc)
                at += k
            shuffler.shuffle(accs)
            total = adamcore.GradNorm(p)
            for acc in accs:
                total.merge(acc)
            assert bits(total.norm()) == want, trial
            assert total.elements == sum(g.size for g in grads)


def test_gradnorm_api():
    acc = adamcore.GradNorm()
    assert acc.norm() == 0.0 and acc.norm_type == 2.0 and acc.elements == 0
    acc.add(np.full(3, 2.0, np.float32))
    acc.add([np.full(1, 4.0, np.float32)])
    assert acc.norm() == math.sqrt(28.0) and acc.total() == 28.0 and acc.elements == 4
    copy = acc.copy()
    acc.reset()
    assert acc.norm() == 0.0 and copy.norm() == math.sqrt(28.0)
    with pytest.raises(ValueError, match="norm_type"):
        adamcore.GradNorm(1.0).merge(copy)
    assert "GradNorm(norm_type=2.0, elements=4)" == repr(copy)


# ---------------------------------------------------------------- accuracy
def exact_sqrt_of_sum_of_squares(x: np.ndarray) -> float:
    """The correctly rounded sqrt of the exact sum of squares (integer arithmetic)."""
    v = x.astype(np.float64)
    m, e = np.frexp(v)  # v = m 2^e, m has <= 53 bits
    mi = (m * 2.0**53).astype(np.int64)
    e = e.astype(np.int64) - 53
    emin = int(e.min())
    total = 0
    for mm, ee in zip(mi.tolist(), (e - emin).tolist()):
        total += (mm * mm) << (2 * ee)
    # sum = total * 2^(2 emin); sqrt = isqrt(total << 2j) * 2^(emin - j)
    j = 120
    r = math.isqrt(total << (2 * j))
    sticky = 1 if r * r != total << (2 * j) else 0
    num, shift = 2 * r + sticky, emin - j - 1  # value = num * 2^shift, rounded once below
    return num * 2.0**shift if shift >= 0 else num / (1 << -shift)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_norm_against_exact_and_fsum(dtype, report):
    """What is guaranteed: the double norm is sqrt(RN(sum of chunk values)), each chunk
    summed in 32 double lanes; for float32 and 16-bit grads that is within a few ulp of
    the correctly rounded sqrt of the exact sum (measured below), and rounded to float32
    it is the correctly rounded float32 norm in every case tested."""
    rng = np.random.default_rng(4)
    worst = 0
    f32_equal = 0
    cases = 0
    for n, scale in [(1000, 1.0), (100_000, 1e-3), (300_000, 10.0), (50_000, 1e-20)]:
        g = (rng.standard_normal(n) * scale).astype(dtype)
        ours = adamcore.grad_norm(g)
        exact = exact_sqrt_of_sum_of_squares(g)
        fsum = math.sqrt(math.fsum(float(x) ** 2 for x in g.astype(np.float64)))
        ulps = abs(bits(ours) - bits(exact))
        worst = max(worst, ulps)
        assert ulps <= 16, (n, ours, exact)
        assert abs(fsum - exact) <= 2 * math.ulp(exact)
        cases += 1
        f32_equal += np.float32(ours) == np.float32(exact)
        # float32 / inf norm exact; 1-norm likewise within a few ulp of the exact sum
        assert adamcore.grad_norm(g, math.inf) == float(np.abs(g.astype(np.float64)).max())
        l1 = adamcore.grad_norm(g, 1)
        assert abs(l1 - math.fsum(np.abs(g.astype(np.float64)).tolist())) <= 16 * math.ulp(l1)
    assert f32_equal == cases
    report(f"grad_norm {dtype}: worst distance from the correctly rounded sqrt of the exact "
           f"sum: {worst} ulp (double); float32-rounded norm correctly rounded in "
           f"{f32_equal}/{cases} cases")


# ---------------------------------------------------------------- torch
@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def torch_dtype(torch, dtype):
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
            BF16: torch.bfloat16, np.dtype(np.float16): torch.float16}[np.dtype(dtype)]


def to_torch(torch, a):
    if a.dtype == BF16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def from_torch(torch, t):
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(BF16)
    return t.numpy()


def torch_clip(torch, grads, max_norm, norm_type=2.0):
    params = []
    for g in grads:
        tg = to_torch(torch, g)
        p = torch.zeros_like(tg, requires_grad=True)
        p.grad = tg
        params.append(p)
    total = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
    return total, [from_torch(torch, p.grad) for p in params]


def ordered_bits(torch, t) -> int:
    """A 0-dim float tensor's bits as an integer (ulp distance = difference; norms >= 0)."""
    as_int = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return int(t.view(as_int).item())


def same_bytes(a, b):
    return a.tobytes() == b.tobytes()


def test_coefficient_is_torch_arithmetic(torch):
    """clip_coefficient(n, m, dtype) == torch's clamp(m / (tensor(n) + 1e-6), max=1)."""
    rng = np.random.default_rng(5)
    for dtype in DTYPES:
        tdt = torch_dtype(torch, dtype)
        for _ in range(3000):
            n = float(np.exp(rng.uniform(-15, 15)))
            m = float(np.exp(rng.uniform(-6, 6)))
            tn = torch.tensor(n, dtype=torch.float64).to(tdt)  # n rounded once to the dtype
            want = torch.clamp(m / (tn + 1e-6), max=1.0).double().item()
            assert adamcore.clip_coefficient(n, m, str(dtype)) == want, (dtype, n, m)
    for special, want in [(math.nan, math.nan), (math.inf, 0.0)]:
        got = adamcore.clip_coefficient(special, 1.0)
        assert (math.isnan(got) and math.isnan(want)) or got == want


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_clip_matches_torch(dtype, torch, report):
    """The norm's distance from torch's (ulps of torch's dtype); with torch's norm
    equal to ours rounded to the dtype (the usual case) the clipped grads are torch's
    bit for bit; given torch's coefficient, scale_grads is torch's _foreach_mul_."""
    rng = np.random.default_rng(6)
    tdt = torch_dtype(torch, dtype)
    ulps, equal_norms, trials = [], 0, 0
    for trial in range(40):
        sizes = [int(s) for s in rng.integers(1, 30_000, int(rng.integers(1, 8)))]
        grads = grads_of(rng, dtype, sizes, float(np.exp(rng.uniform(-4, 2))))
        max_norm = float(np.exp(rng.uniform(-3, 3)))
        ours = [g.copy() for g in grads]
        norm = adamcore.clip_grad_norm(ours, max_norm)
        tnorm, tgrads = torch_clip(torch, grads, max_norm)
        ours_rounded = torch.tensor(norm, dtype=torch.float64).to(tdt)
        a, b = ordered_bits(torch, ours_rounded), ordered_bits(torch, tnorm)
        ulps.append(abs(a - b))
        trials += 1
        if a == b:
            equal_norms += 1
            for x, y in zip(ours, tgrads):
                assert same_bytes(x, y), (dtype, trial)
        # given torch's coefficient, our scaling is torch's _foreach_mul_
        coef = torch.clamp(max_norm / (tnorm + 1e-6), max=1.0)
        mine = [g.copy() for g in grads]
        adamcore.scale_grads(mine, coef.double().item())
        for x, y in zip(mine, tgrads):
            assert same_bytes(x, y), (dtype, trial, "scale")
    # torch sums in the grads' dtype (float32: float32 partial sums): measured worst
    # distances are a few ulp; these bounds are loose on purpose.
    assert max(ulps) <= {np.dtype(np.float32): 16, np.dtype(np.float64): 256}.get(dtype, 1)
    report(f"clip_grad_norm {dtype} vs torch.nn.utils.clip_grad_norm_: norm equal to torch's "
           f"(ours rounded to {dtype}) in {equal_norms}/{trials} trials, worst {max(ulps)} ulp "
           f"of {dtype}; clipped grads bitwise equal whenever the norms are, and always "
           f"given torch's coefficient")


def test_mixed_dtypes_follow_torch_promotion(torch):
    rng = np.random.default_rng(7)
    grads = [rng.standard_normal(5000).astype(BF16), rng.standard_normal(3000).astype(np.float32)]
    ours = [g.copy() for g in grads]
    norm = adamcore.clip_grad_norm(ours, 0.5)
    tnorm, tgrads = torch_clip(torch, grads, 0.5)
    assert tnorm.dtype == torch.float32
    if np.float32(norm) == np.float32(tnorm.item()):
        for x, y in zip(ours, tgrads):
            assert same_bytes(x, y)


# ---------------------------------------------------------------- non-finite values
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nonfinite(dtype, torch):
    rng = np.random.default_rng(8)
    g = grads_of(rng, dtype, [9000])[0]
    g[10] = np.inf
    assert adamcore.grad_norm(g) == math.inf
    h = g.copy()
    assert adamcore.clip_grad_norm([h], 1.0) == math.inf
    tnorm, tgrads = torch_clip(torch, [g], 1.0)
    assert math.isinf(tnorm.item())
    # coef 0: 0 * inf = NaN, 0 * x = +-0, as torch (NaN payloads are not compared)
    x, y = h.astype(np.float64), tgrads[0].astype(np.float64)
    assert np.array_equal(np.isnan(x), np.isnan(y)) and np.isnan(x).sum() == 1
    assert same_bytes(x[~np.isnan(x)], y[~np.isnan(y)])
    g[20] = np.nan
    for p in NORM_TYPES:
        assert math.isnan(adamcore.grad_norm(g, p))
    before = g.tobytes()
    with pytest.raises(RuntimeError, match="non-finite"):
        adamcore.clip_grad_norm([g], 1.0, error_if_nonfinite=True)
    assert g.tobytes() == before
    with pytest.raises(RuntimeError, match="non-finite"):
        torch_clip_err = [torch.zeros(1, requires_grad=True)]
        torch_clip_err[0].grad = torch.tensor([math.nan])
        torch.nn.utils.clip_grad_norm_(torch_clip_err, 1.0, error_if_nonfinite=True)
    h = g.copy()
    assert math.isnan(adamcore.clip_grad_norm([h], 1.0))
    assert np.isnan(h.astype(np.float64)).all()  # NaN coefficient, as torch


def test_no_grads_and_no_clipping():
    assert adamcore.grad_norm([]) == 0.0
    assert adamcore.clip_grad_norm([], 1.0) == 0.0
    g = np.array([0.3, -0.4], np.float32)
    assert adamcore.clip_grad_norm(g, 10.0) == pytest.approx(0.5)
    assert g.tolist() == [np.float32(0.3), np.float32(-0.4)]  # coefficient 1: untouched


# ---------------------------------------------------------------- argument checks
def test_arguments_checked_before_writing():
    a = np.ones(10, np.float32)
    ro = np.ones(10, np.float32)
    ro.flags.writeable = False
    before = a.tobytes()
    cases = [
        (([a, ro], 0.1), ValueError, r"grads\[1\] is read-only"),
        (([a, a], 0.1), ValueError, "same memory"),
        (([a, a[2:5]], 0.1), ValueError, "overlap"),
        (([a, np.ones(3, np.int32)], 0.1), TypeError, r"grads\[1\] must have dtype"),
        (([a, np.ones((4, 4), np.float32)[:, 1]], 0.1), ValueError, "C-contiguous"),
        (([a, [1.0]], 0.1), TypeError, r"grads\[1\] must be a numpy.ndarray"),
        (([a], -1.0), ValueError, "max_norm"),
        (([a], math.nan), ValueError, "max_norm"),
        (([a], "1"), TypeError, "max_norm"),
        (([a], 0.1, 0.0), ValueError, "norm_type"),
        (([a], 0.1, -2.0), ValueError, "norm_type"),
        (([a], 0.1, math.nan), ValueError, "norm_type"),
        (([a], 0.1, "two"), ValueError, "norm_type"),
        (([a], 0.1, True), TypeError, "norm_type"),
        (([a], 0.1, 2.0, 1), TypeError, "error_if_nonfinite"),
    ]
    for args, exc, match in cases:
        with pytest.raises(exc, match=match):
            adamcore.clip_grad_norm(*args)
        assert a.tobytes() == before, match
    # reading only: overlapping and read-only grads are fine for the norm
    assert adamcore.grad_norm([a, a, ro]) == pytest.approx(math.sqrt(30))
    assert adamcore.grad_norm(a, "inf") == 1.0
    assert adamcore.clip_grad_norm([a], 1.0, norm_type=2) == pytest.approx(math.sqrt(10))
