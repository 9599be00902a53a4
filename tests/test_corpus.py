"""Every bad or odd input of the corpus (tests/corpus/build.py) through inspect, optimize, verify and compile, as a
user runs them: the expected outcome, the exit-status contract, one-line errors and no traceback, input files
byte-identical, no partial output, each command within 2 minutes."""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import onnx
import pytest

sys.path.insert(0, str(Path(__file__).parent / "corpus"))
import build as corpus  # noqa: E402

from onebyone import cli  # noqa: E402
from onebyone.verify.onnxruntime_run import run_samples  # noqa: E402

LIMIT_S = 120


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    corpus.build(root)
    return root


def _state(d: Path) -> dict[str, str]:
    """sha256 of every file under d (the inputs a command must leave untouched), by relative path."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def run(capsys, d: Path, *args) -> tuple[int, str, str, float]:
    """The CLI in this process (cli.main, as the console script runs it) in folder d: exit code, stdout, stderr."""
    import os

    old = os.getcwd()
    os.chdir(d)
    t0 = time.monotonic()
    try:
        cli.main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    finally:
        os.chdir(old)
    out = capsys.readouterr()
    return code, out.out, out.err, time.monotonic() - t0


def check_contract(code, out, err, seconds, what):
    assert code in (0, 1, 2), f"{what}: exit {code} (internal error?)\n{out}\n{err}"
    assert "Traceback" not in out + err, f"{what}: traceback\n{err}"
    assert seconds < LIMIT_S, f"{what}: took {seconds:.0f} s"
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("onebyone: error:"), f"{what}: not one line\n{err}"


def check_expect(expect, code, out, err, what):
    kind, text = expect
    if kind == "error":
        assert code == 2 and text in err, f"{what}: expected an error naming {text!r}, got exit {code}\n{out}\n{err}"
    else:
        assert code == 0, f"{what}: expected success, got exit {code}\n{out}\n{err}"
        assert text in " ".join(out.split()), f"{what}: {text!r} not in the output\n{out}"
        if kind == "rewrite":
            assert "PASS" in out or "rewritten" in out or "would rewrite" in out, out


def _strip(args: tuple[str, ...], drop: tuple[str, ...]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in drop:
            skip = True
        else:
            out.append(a)
    return out


def _keep(args: tuple[str, ...], keep: tuple[str, ...]) -> list[str]:
    out = []
    for i, a in enumerate(args):
        if a in keep and i + 1 < len(args):
            out += [a, args[i + 1]]
    return out


def test_the_corpus_is_large_enough():
    assert len(corpus.CASES) >= 40 and len({c.name for c in corpus.CASES}) == len(corpus.CASES)


@pytest.mark.parametrize("case", corpus.CASES, ids=lambda c: c.name)
def test_case(case, folder, capsys):
    d = folder / case.name
    before = _state(d)
    model_file_error = case.file_error

    code, out, err, s = run(capsys, d, "inspect", case.model, *_strip(case.args, corpus.OPTIMIZE_ONLY))
    check_contract(code, out, err, s, "inspect")
    check_expect(case.expect, code, out, err, "inspect")
    if case.expect[0] == "rewrite":
        assert "would rewrite" in out and "would be rewritten" in out, out  # inspect plans, it does not act

    code, out, err, s = run(capsys, d, "optimize", case.model, "-o", case.output, *case.args)
    check_contract(code, out, err, s, "optimize")
    expect = case.optimize_expect or case.expect
    check_expect(expect, code, out, err, "optimize")
    written = d / case.output
    if expect[0] == "error":
        assert _state(d) == before, "optimize wrote or changed files although it failed"
    else:
        assert written.is_file() and "PASS" in out
        new = {k: v for k, v in _state(d).items() if k not in before}
        assert set(new) <= {case.output, case.output + ".data"}, f"unexpected files {set(new)}"
        if expect[0] != "rewrite":  # nothing rewritten: the written model computes what the original does
            assert "0 of" in out or "skipped" in out
        if (d / (case.model + ".data")).exists():  # external data stays external
            assert (d / (case.output + ".data")).is_file()
        onnx.checker.check_model(str(written))
        written.unlink()
        if (d / (case.output + ".data")).exists():
            (d / (case.output + ".data")).unlink()
    assert {k: v for k, v in _state(d).items()} == before, "an input file changed"

    code, out, err, s = run(capsys, d, "verify", case.model, case.model, *_keep(case.args, corpus.VERIFY_OPTIONS))
    check_contract(code, out, err, s, "verify")
    if model_file_error:
        assert code == 2
    elif case.expect[0] != "error" and (case.optimize_expect or ("ok",))[0] != "error":
        assert code == 0, out + err

    code, out, err, s = run(capsys, d, "compile", case.model, "-o", "pkg", *_keep(case.args, ("--input-shape",)))
    check_contract(code, out, err, s, "compile")
    if model_file_error:
        assert code == 2
    if code != 0:
        assert not (d / "pkg").exists(), "compile left a partial package"
    else:
        import shutil

        shutil.rmtree(d / "pkg")
    assert _state(d) == before, "an input file changed or an output was left behind"


def test_scalar_inputs_feed_onnxruntime(folder):
    """A 0-d model input given in --inputs arrives as a 0-d array (numpy scalars do not feed onnxruntime)."""
    from onebyone.verify.inputs import npz_samples

    d = folder / "scalar-input-npz"
    import numpy as np

    samples = npz_samples(d / "inputs.npz", {"x": (1, 8, 8, 8), "g": ()}, {"x": np.float32, "g": np.float32})
    assert samples[1]["g"].shape == () and isinstance(samples[1]["g"], np.ndarray)
    outs = run_samples(str(d / "model.onnx"), samples)
    assert len(outs["y"]) == 2
