"""Milliseconds, not MACs: the latency model (measured on onnxruntime), the time budget, and never shipping a slower
model. Nothing here depends on how fast the machine is: decisions that would are driven by stub runtimes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onebyone import RankPolicy, optimize
from onebyone.latency import LatencyModel, end_to_end, micro
from onebyone.latency.model import MAX_RANKS, ranks_to_measure
from onebyone.latency import timer
from onebyone.latency.timer import Timing
from onebyone.models import generators
from onebyone.passes import plan
from onebyone.passes.analysis import analyze
from test_cli import cli


def _ir(proto):
    return ir.serde.deserialize_model(proto)


def _model():
    return generators.vgg(size=16, widths=(16, 32), low_rank=0.5)


class StubLatency:
    """A runtime whose every conv takes 1 ms and whose rewritten pairs take `pair_ms(rank)` ms (noise 1%)."""

    runtime = {"name": "stub", "version": "0", "device": "none", "threads": 1}
    threads = 1
    shares_kernels = False

    def __init__(self, pair_ms):
        self.pair_ms = pair_ms

    def measure(self, decisions, progress=None):
        for d in decisions:
            if d.candidate:
                d.latency = {"before": Timing(1.0, 0.01),
                             "after": {r: Timing(self.pair_ms(r), 0.01) for r in ranks_to_measure(d)}}

    def pair_time(self, d, rank):
        return d.latency["after"].setdefault(rank, Timing(self.pair_ms(rank), 0.01))

    def time_models(self, models, feeds, repeats=None):  # whole models: really timed (onnxruntime, 1 thread)
        return timer.time_models(models, feeds, 1, 5)


def test_micro_models_compute_what_the_conv_computes_in_shape():
    """The isolated micro-models have the conv's real input and output shapes."""
    from onebyone.verify.onnxruntime_run import run_samples

    model = _ir(_model())
    info = next(i for i in analyze(model, {"input": (1, 3, 16, 16)}) if i.skip_reason is None)
    x = {"x": np.zeros((1, *info.input_shape[1:]), np.float32)}
    for m in (micro.original(info), micro.pair(info, 2)):
        onnx.checker.check_model(m)
        (y,) = run_samples(m, [x])["y"]
        assert tuple(y.shape) == tuple(info.output_shape)


def test_latency_model_measures_a_rank_grid_and_caches_it(tmp_path):
    model = _ir(_model())
    infos = analyze(model, {"input": (1, 3, 16, 16)})
    decisions = [plan.start(i) for i in infos]
    lat = LatencyModel(threads=1, cache_dir=tmp_path, repeats=5)
    lat.measure(decisions)
    live = [d for d in decisions if d.candidate]
    assert live and lat.misses == len(live) and lat.hits == 0
    for d in live:
        grid = ranks_to_measure(d)
        assert 0 < len(grid) <= MAX_RANKS and max(grid) < d.info.break_even_rank
        assert set(d.latency["after"]) == set(grid)
        assert d.latency["before"].ms > 0 and all(t.ms > 0 for t in d.latency["after"].values())
    before = lat.misses
    lat.measure([plan.start(i) for i in infos])  # the same model again in this process: nothing is timed again
    assert lat.misses == before and lat.hits == 0
    again = [plan.start(i) for i in infos]
    lat2 = LatencyModel(threads=1, cache_dir=tmp_path, repeats=5)
    lat2.measure(again)
    assert lat2.hits == len(live) and lat2.misses == 0  # a second run is a cache hit
    assert [d.latency["before"] for d in again if d.candidate] == [d.latency["before"] for d in live]


def test_a_pair_measured_slower_is_never_rewritten():
    """Every pair slower than its conv: nothing is rewritten, whatever the policy, and the reason says so."""
    slow = StubLatency(lambda r: 1.5)
    for policy in (RankPolicy("exact"), RankPolicy("rank", rank=0.25), RankPolicy("budget", time=0.5)):
        _, report = optimize(_ir(_model()), policy, latency=slow, verify=False, raise_on_failure=False)
        assert report.totals.rewritten == 0
        reasons = [l.reason for l in report.layers if l.time_before_ms is not None]
        assert reasons and all("not faster" in r or "no measured rank is faster" in r for r in reasons), reasons


def test_the_time_budget_spends_measured_milliseconds(monkeypatch):
    """Pairs cost rank/16 ms against 1 ms per conv: the chosen pairs' measured time fits the budget. (The stub
    runtime also times the whole model, as faster, so nothing here depends on this machine.)"""
    monkeypatch.setattr(end_to_end, "time_pair", lambda *a, **k: (Timing(1.0, 0.01), Timing(0.5, 0.01)))
    stub = StubLatency(lambda r: r / 16)
    _, report = optimize(_ir(_model()), RankPolicy("budget", time=0.5), latency=stub, verify=False,
                         raise_on_failure=False)
    layers = [l for l in report.layers if l.time_before_ms is not None]
    spent = sum(l.time_after_ms for l in layers)
    assert report.totals.rewritten > 0 and spent <= 0.5 * sum(l.time_before_ms for l in layers) + 1e-9
    for l in layers:
        if l.action == "rewritten":
            assert l.rank in l.measured_ranks and l.time_after_ms == pytest.approx(l.rank / 16, abs=1e-4)


def test_rewrites_are_backed_off_until_the_whole_model_is_faster(monkeypatch):
    """End to end the model is 'slower' while more than one conv is rewritten (a stub runtime): the convs that save
    the least are undone first, and the report says which."""
    stub = StubLatency(lambda r: 0.5 + r / 100)
    calls = []

    def fake_time_pair(original, optimized, feed, latency, repeats=15):
        n = sum(1 for node in optimized.graph if node.op_type == "Conv") - sum(1 for node in original.graph if node.op_type == "Conv")
        calls.append(n)
        return Timing(1.0, 0.01), Timing(1.0 if n > 1 else 0.8, 0.01)

    monkeypatch.setattr(end_to_end, "time_pair", fake_time_pair)
    _, report = optimize(_ir(_model()), RankPolicy("exact"), latency=stub, verify=False)
    assert report.totals.rewritten == 1 and report.timing["faster"]
    backed = report.timing["backed_off"]
    assert len(backed) == calls[0] - 1 and calls[-1] == 1
    layers = {l.name: l for l in report.layers}
    kept = next(l for l in report.layers if l.action == "rewritten")
    assert all("not faster end to end" in layers[n].reason for n in backed)
    assert all(layers[n].time_before_ms - stub.pair_ms(layers[n].rank) <= kept.time_before_ms - kept.time_after_ms + 1e-9
               for n in backed)


def test_a_model_with_nothing_rewritten_is_never_called_faster(monkeypatch):
    """Every pair is slower than its conv, so nothing is rewritten: even when the end-to-end timing of the two
    (identical) models comes out 2x apart, as two sessions' noise can, the model is not called faster."""
    monkeypatch.setattr(end_to_end, "time_pair", lambda *a, **k: (Timing(1.0, 0.01), Timing(0.5, 0.01)))
    _, report = optimize(_ir(_model()), RankPolicy("budget", time=0.5), latency=StubLatency(lambda r: 2.0),
                         verify=False, raise_on_failure=False)
    assert report.totals.rewritten == 0 and report.timing["speedup"] == pytest.approx(2.0)
    assert not report.timing["faster"]


def test_cli_cost_time_reports_measured_and_predicted_speedups(tmp_path):
    model = tmp_path / "vgg.onnx"
    onnx.save(_model(), model)
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    proc = cli("optimize", model, "-o", out, "--cost", "time", "--threads", "1", "--cache-dir", tmp_path / "cache",
               "--report", rep, "--force")
    assert proc.returncode in (0, 1) and "measured on onnxruntime" in proc.stdout
    timing = json.loads(rep.read_text())["timing"]
    assert timing["runtime"]["threads"] == 1 and timing["time_before_ms"] > 0 and timing["speedup"] > 0
    if not timing["faster"]:
        assert "no rewrite makes the model faster" in proc.stdout
    assert list((tmp_path / "cache").glob("latency-*.json"))
    proc = cli("optimize", model, "-o", out, "--cost", "bogus")
    assert proc.returncode == 2 and "--cost" in proc.stderr
    proc = cli("optimize", model, "-o", out, "--policy", "budget", "--time", "1.5")
    assert proc.returncode == 2 and "time" in proc.stderr


def test_paired_rounds_see_a_speedup_that_drift_hides_from_the_medians():
    """A machine whose speed drifts 2x during the measurement: the medians of both models overlap, but each round's
    ratio is 0.9, so the paired test calls it faster; the same drift with a ratio of 1.0 is not faster."""
    drift = np.linspace(1.0, 2.0, 15)
    before = Timing.of(10 * drift)
    faster, same = Timing.of(9 * drift), Timing.of(10 * drift * (1 + 0.003 * np.sin(np.arange(15))))
    assert not faster.faster_than(before)  # medians and their noise: undecided, so "not faster"
    assert end_to_end.is_faster(before, faster) and not end_to_end.is_faster(before, same)
    r = timer.paired_ratio(before, faster)
    assert r.median == pytest.approx(0.9) and r.lower <= r.median <= r.upper and r.rounds == 15 and r.decided
    assert not timer.paired_ratio(before, same).faster


def test_an_undecided_end_to_end_ratio_gets_more_rounds():
    """While the ratio's interval straddles the line, more rounds are timed (up to max_rounds batches)."""
    rng = np.random.default_rng(0)
    calls = []

    class Noisy:
        def time_models(self, models, feeds, repeats=None):
            calls.append(repeats)
            a = 10 + rng.standard_normal(repeats)
            return Timing.of(a), Timing.of(a * rng.uniform(0.9, 1.1, repeats))  # ratio ~1 +- 10%: undecided at first

    before, after = end_to_end.time_pair(None, None, {}, Noisy(), repeats=15, max_rounds=3)
    assert len(calls) >= 2 and len(before.samples) == len(after.samples) == 15 * len(calls) <= 45


def test_calibrated_cli_runs_default_to_measured_time(tmp_path):
    """--cost auto (the default): with calibration data ranks are chosen by measured time and the model is checked
    end to end; without it, or with --cost macs, nothing is timed."""
    model = tmp_path / "vgg.onnx"
    onnx.save(_model(), model)
    npz = tmp_path / "calib.npz"
    np.savez(npz, input=np.random.default_rng(3).standard_normal((8, 1, 3, 16, 16)).astype(np.float32))
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    base = ("optimize", model, "-o", out, "--policy", "energy", "--energy", "0.9", "--report", rep, "--force",
            "--threads", "1")
    cli(*base, "--calibration", npz)
    assert json.loads(rep.read_text())["timing"]["runtime"]["name"] == "onnxruntime"
    for extra in (("--calibration", npz, "--cost", "macs"), ()):
        cli(*base, *extra)
        assert json.loads(rep.read_text())["timing"] is None


def test_identical_convs_share_one_rank_when_the_measured_pairs_allow():
    """TVM tunes one kernel per shape: identical convs rewritten at different ranks get the largest of them when the
    measured pairs cost the group little more (flat pair times), and keep their own ranks when the larger rank
    costs much more (steep pair times)."""
    from collections import Counter

    from onebyone.latency.sharing import share_kernel_shapes

    model = _ir(generators.resnet(size=16, blocks=(3, 1, 1), low_rank=0.5))
    infos = analyze(model, {"input": (1, 3, 16, 16)})
    sig = lambda d: (tuple(d.info.input_shape), d.info.out_channels, tuple(d.info.kernel), tuple(d.info.strides))  # noqa: E731
    for pair_ms, shared in ((lambda r: 0.5, True), (lambda r: r / 16, False)):
        decisions = [plan.start(i) for i in infos]
        StubLatency(pair_ms).measure(decisions)
        group = [d for d in decisions if d.candidate and sig(d) == Counter(sig(d) for d in decisions
                                                                         if d.candidate).most_common(1)[0][0]]
        assert len(group) >= 4
        for k, d in enumerate(group):
            plan.accept(d, 2 + 2 * (k % 2))  # ranks 2 and 4
        changed = share_kernel_shapes(decisions, sig, lambda d, r: Timing(pair_ms(r), 0.01))
        assert {d.rank for d in group} == ({4} if shared else {2, 4})
        assert changed == (len(group) // 2 if shared else 0)
        assert all(("share one kernel shape" in d.reason) == (shared and k % 2 == 0) for k, d in enumerate(group))


def test_kernel_sharing_follows_the_runtime_unless_told():
    """Sharing kernel shapes is on for TVM and off for onnxruntime by default; `share_kernels` overrides it (to measure
    what sharing buys, scripts/benchmark_sharing.py)."""
    from onebyone.latency.tvm_runtime import TvmRuntime
    from onebyone.runtime import targets

    tvm_rt = TvmRuntime(targets.resolve("cpu"))
    assert LatencyModel(runtime=tvm_rt).shares_kernels and not LatencyModel(runtime=tvm_rt, share_kernels=False).shares_kernels
    assert not LatencyModel(threads=1).shares_kernels and LatencyModel(threads=1, share_kernels=True).shares_kernels


def test_a_time_budget_times_every_form_and_takes_the_one_that_pays(monkeypatch):
    """With two forms, each conv is timed in its preferred form and in the other; when only the other form's pairs
    are faster than the conv (a stub: the preferred form's pairs 1.5 ms, the other's rank/16 ms), the time budget
    rewrites the convs in the other form and says why."""
    monkeypatch.setattr(end_to_end, "time_pair", lambda *a, **k: (Timing(1.0, 0.01), Timing(0.5, 0.01)))

    class FormStub(StubLatency):
        def __init__(self):
            super().__init__(lambda r: r / 16)
            self.preferred = {}

        def measure(self, decisions, progress=None):
            for d in decisions:
                if d.candidate:
                    self.preferred.setdefault(d.info.name, d.form)  # the first measurement is of the preferred form
                    slow = self.preferred[d.info.name] == d.form
                    d.latency = {"before": Timing(1.0, 0.01),
                                 "after": {r: Timing(1.5 if slow else r / 16, 0.01) for r in ranks_to_measure(d)}}

    stub = FormStub()
    _, report = optimize(_ir(_model()), RankPolicy("budget", time=0.6), latency=stub, verify=False,
                         raise_on_failure=False, forms=("input", "spatial"))
    rewritten = [l for l in report.layers if l.action == "rewritten"]
    assert rewritten
    for l in rewritten:
        assert l.form != stub.preferred[l.name], l
        assert l.form_choice.startswith("chosen by the time budget 0.6"), l.form_choice
        assert l.time_after_ms == pytest.approx(l.rank / 16, abs=1e-4)
