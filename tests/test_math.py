"""Factorization, rank rules and the cost model against numpy and brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onebyone.passes import cost, factorize, svd_cache
from onebyone.passes.policies import RankPolicy
from onebyone.models.weights import low_rank_weight, random_weight


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_factorize_reconstructs_low_rank_weights(groups, rng):
    w = low_rank_weight(16, 8, (3, 5), groups, 3, rng)
    svals = factorize.singular_values(w, groups)
    assert [factorize.numerical_rank(s, (8, 16 // groups * 15), w.dtype) for s in svals] == [3] * groups
    f = factorize.factorize_svd(w, groups, 3)
    assert f.bottleneck.shape == (3 * groups, 8, 1, 1) and f.weight.shape == (16, 3, 3, 5)
    assert f.rel_error < 1e-6
    np.testing.assert_allclose(factorize.compose(f.bottleneck, f.weight, groups), w, rtol=0, atol=1e-6)


def test_truncated_svd_error_equals_discarded_energy(rng):
    """Eckart-Young: the relative Frobenius error of rank r is sqrt of the discarded squared singular values."""
    w = random_weight(24, 12, (3, 3), rng)
    (s,) = factorize.singular_values(w, 1)
    for r in (1, 4, 8, 11):
        f = factorize.factorize_svd(w, 1, r)
        expected = np.sqrt((s[r:] ** 2).sum() / (s**2).sum())
        assert f.rel_error == pytest.approx(expected, rel=1e-5)


def test_svds_are_computed_once_per_matrix_and_cannot_be_changed_by_a_caller(rng, monkeypatch):
    """The cache gives numpy's SVD of each matrix, computing it once per content (a copy hits, a changed matrix does
    not), the spectrum from a cached full SVD, read-only arrays, and stays within its byte limit."""
    calls = []
    real = np.linalg.svd
    monkeypatch.setattr(np.linalg, "svd", lambda m, **kw: calls.append(m.shape) or real(m, **kw))
    svd_cache.clear()
    m = rng.standard_normal((12, 30))
    u, s, vt = svd_cache.svd(m)
    ref = real(m, full_matrices=False)
    for got, want in zip((u, s, vt), ref):
        np.testing.assert_array_equal(got, want)
    assert svd_cache.svd(m.copy())[1] is s and svd_cache.singular_values(m) is s and len(calls) == 1
    with pytest.raises(ValueError):
        s[0] = 0.0
    changed = m.copy()
    changed[3, 4] += 1e-9
    assert svd_cache.singular_values(changed) is not s and len(calls) == 2
    np.testing.assert_allclose(svd_cache.singular_values(changed), real(changed, compute_uv=False), rtol=1e-12)
    monkeypatch.setattr(svd_cache, "CACHE_BYTES", 3 * s.nbytes)
    for i in range(5):
        svd_cache.singular_values(rng.standard_normal((12, 30)))
    assert svd_cache._held[0] <= 3 * s.nbytes
    svd_cache.clear()


def test_unfold_matches_the_definition(rng):
    w = random_weight(6, 4, (3, 3), rng)
    (m,) = factorize.unfold(w, 1)
    np.testing.assert_array_equal(m, w.transpose(1, 0, 2, 3).reshape(4, -1))


def test_numerical_rank_ignores_float32_rounding_but_not_real_rank(rng):
    w = low_rank_weight(32, 32, (3, 3), 1, 5, rng)
    (s,) = factorize.singular_values(w, 1)
    assert factorize.numerical_rank(s, (32, 288), np.dtype(np.float32)) == 5
    assert np.linalg.matrix_rank(w.transpose(1, 0, 2, 3).reshape(32, -1).astype(np.float64)) > 5  # rounding is rank in float64
    full = random_weight(32, 32, (3, 3), rng)
    (s2,) = factorize.singular_values(full, 1)
    assert factorize.numerical_rank(s2, (32, 288), np.dtype(np.float32)) == 32


def test_energy_rank():
    s = np.sqrt(np.array([50.0, 30.0, 15.0, 5.0]))
    assert factorize.energy_rank(s, 0.5) == 1
    assert factorize.energy_rank(s, 0.8) == 2
    assert factorize.energy_rank(s, 0.81) == 3
    assert factorize.energy_rank(s, 1.0) == 4


def _decision(w):
    """The plan's decision for a one-conv model with weight `w` (16 channels, 12x12 input)."""
    import onnx_ir as ir

    from onebyone.models.single_conv import single_conv_model
    from onebyone.passes import plan
    from onebyone.passes.analysis import analyze

    model = ir.serde.deserialize_model(single_conv_model((1, 16, 12, 12), w, pads=(1, 1, 1, 1)))
    (info,) = analyze(model, {"x": (1, 16, 12, 12)})
    return plan.start(info)


def test_rank_policies(rng):
    w = random_weight(16, 16, (3, 3), rng)
    d = _decision(w)
    svals = d.svals

    def rank(policy):
        return policy.rounded(policy.rank_for(d), 16)

    assert rank(RankPolicy("rank", rank=5)) == 5
    assert rank(RankPolicy("rank", rank=0.25)) == 4
    assert rank(RankPolicy("rank", rank=5, round_to=8)) == 8
    assert rank(RankPolicy("rank", rank=15, round_to=8)) == 16  # capped at C/g
    assert rank(RankPolicy("exact")) == 16  # random weights are full rank
    r = rank(RankPolicy("energy", energy=0.9))
    sq = svals[0] ** 2
    assert sq[:r].sum() / sq.sum() >= 0.9 > sq[: r - 1].sum() / sq.sum()


def test_saving_policy_keeps_each_conv_within_its_fraction_of_macs(rng):
    """The example policy added as one file: the largest rank whose MACs are within the fraction, per conv."""
    d = _decision(random_weight(16, 16, (3, 3), rng))
    RankPolicy("saving", macs=0.5).assign([d])
    assert d.rank is not None and d.macs_at(d.rank) <= 0.5 * d.info.macs
    assert d.macs_at(d.rank + 1) > 0.5 * d.info.macs
    d2 = _decision(random_weight(16, 16, (3, 3), rng))
    RankPolicy("saving", macs=0.01).assign([d2])
    assert d2.rank is None and "within 0.01" in d2.reason


def test_a_registered_policy_is_usable_by_name_through_the_pass(rng):
    """A new policy is one class and its registration: RankPolicy and the pass take it by name."""
    import dataclasses

    import onnx_ir as ir

    from onebyone import BottleneckPass
    from onebyone.models.single_conv import single_conv_model
    from onebyone.passes.policies import POLICIES, register
    from onebyone.passes.policies.per_conv import PerConv

    @register
    @dataclasses.dataclass(frozen=True)
    class Half(PerConv):
        kind = "half-of-break-even"

        def rank_for(self, d):
            return max(1, int(d.info.break_even_rank // 2))

    try:
        model = ir.serde.deserialize_model(single_conv_model((1, 16, 12, 12), random_weight(16, 16, (3, 3), rng), pads=(1, 1, 1, 1)))
        p = BottleneckPass(RankPolicy("half-of-break-even"))
        p(model)
        (layer,) = p.report.layers
        assert layer.action == "rewritten" and layer.rank == int(layer.break_even_rank // 2)
    finally:
        POLICIES.pop("half-of-break-even")


@pytest.mark.parametrize("bad", [dict(kind="rank"), dict(kind="rank", rank=1.5), dict(kind="energy", energy=1.5),
                                 dict(kind="exact", round_to=0), dict(kind="svd"), dict(kind="exact", rank=3),
                                 dict(kind="saving", macs=1.0), dict(kind="rank", rank=float("nan"))])
def test_bad_policies_are_refused(bad):
    with pytest.raises(ValueError):
        RankPolicy(**bad)


@settings(max_examples=300, deadline=None)
@given(
    h=st.integers(1, 64), stride=st.integers(1, 3), c=st.integers(1, 64), n=st.integers(1, 64),
    groups=st.sampled_from([1, 2, 4]), k=st.sampled_from([1, 3, 5, 9, 25, 27]), rank=st.integers(1, 64),
)
def test_break_even_is_exactly_where_macs_stop_falling(h, stride, c, n, groups, k, rank):
    c, n = c * groups, n * groups
    rank = min(rank, c // groups)
    hin, hout = h * h, ((h + stride - 1) // stride) ** 2
    before = cost.conv_macs(hout, n, c, groups, k)
    after = cost.bottleneck_macs(hin, hout, n, c, groups, k, rank)
    # brute-force count of the two convs, loop-free but from first principles
    assert before == hout * n * (c // groups) * k
    assert after == hin * (groups * rank) * (c // groups) + hout * n * rank * k
    assert (after < before) == (rank < cost.break_even_rank(hin, hout, n, c, groups, k))
    assert cost.max_profitable_rank(cost.break_even_rank(hin, hout, n, c, groups, k)) < cost.break_even_rank(hin, hout, n, c, groups, k)


def test_half_precision_numerical_rank_is_lossless_only_within_the_weights_own_rounding(rng):
    """float16: a decaying spectrum is not 'low rank' (max(shape)·eps would call ~14% of it noise), an exactly
    low-rank weight stored in float16 is."""
    u, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    v, _ = np.linalg.qr(rng.standard_normal((144, 16)))
    decaying = ((u * 0.5 ** np.arange(16)) @ v.T).astype(np.float16)
    exact4 = (u[:, :4] @ v[:, :4].T).astype(np.float16)
    for m, lo, hi in ((decaying, 10, 16), (exact4, 4, 4)):
        s = np.linalg.svd(m.astype(np.float64), compute_uv=False)
        r = factorize.numerical_rank(s, (16, 144), np.float16)
        assert lo <= r <= hi, r
        tail = np.sqrt((s[r:] ** 2).sum())
        assert tail <= np.finfo(np.float16).eps * np.linalg.norm(s)  # what is cut is within float16 rounding
