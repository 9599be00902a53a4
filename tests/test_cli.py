"""The command line, run as a user runs it: exit codes, one-line errors, untouched inputs, atomic outputs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import check_errors, expected_kept, rel_err, run_ort
from onebyone.models import generators


def cli(*args, check_rc: int | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "onebyone", *map(str, args)], capture_output=True, text=True)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stdout + proc.stderr
    return proc


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def lowrank_model(tmp_path):
    path = tmp_path / "resnet.onnx"
    onnx.save(generators.resnet(low_rank=0.5), path)
    return path


@pytest.fixture
def fullrank_model(tmp_path):
    path = tmp_path / "vgg.onnx"
    onnx.save(generators.vgg(), path)
    return path


def one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onebyone: error:"), proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_optimize_writes_a_verified_model_and_report(lowrank_model, tmp_path):
    before = digest(lowrank_model)
    out, rep, png = tmp_path / "out.onnx", tmp_path / "r.json", tmp_path / "s.png"
    proc = cli("optimize", lowrank_model, "-o", out, "--report", rep, "--plot", png, check_rc=0)
    assert "PASS" in proc.stdout and "lossless" in proc.stdout
    assert digest(lowrank_model) == before
    report = json.loads(rep.read_text())
    assert report["verification"]["passed"] and report["output"] == str(out.resolve())
    assert set(report["totals"]) >= {"macs_before", "macs_after", "params_before", "params_after"}
    for layer in report["layers"]:
        assert set(layer) >= {"name", "action", "reason", "rank", "break_even_rank", "lossless", "macs_before", "macs_after"}
        assert layer["reason"]
    assert report["totals"]["macs_after"] < report["totals"]["macs_before"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    x = np.random.default_rng(5).standard_normal((3, 3, 32, 32)).astype(np.float32)
    ref = run_ort(onnx.load(lowrank_model), {"input": x})[0]
    got = run_ort(onnx.load(out), {"input": x})[0]
    assert rel_err(ref, got) < 1e-5
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_inspect_lists_every_conv_with_a_reason(fullrank_model, tmp_path):
    rep = tmp_path / "r.json"
    proc = cli("inspect", fullrank_model, "--report", rep, check_rc=0)
    report = json.loads(rep.read_text())
    assert len(report["layers"]) == 6
    assert all(l["action"] == "skipped" and "break-even" in l["reason"] for l in report["layers"])
    assert "0 of 6 convs would be rewritten" in proc.stdout
    proc = cli("inspect", fullrank_model, "--policy", "rank", "--rank", "0.25", "--report", rep, check_rc=0)
    assert json.loads(rep.read_text())["totals"]["rewritten"] > 0
    explicit = json.loads(rep.read_text())
    cli("inspect", fullrank_model, "--rank", "0.25", "--report", rep, check_rc=0)  # --rank alone: the rank policy
    assert json.loads(rep.read_text())["layers"] == explicit["layers"]
    cli("inspect", fullrank_model, "--macs", "0.5", "--report", rep, check_rc=0)  # --macs alone: a budget
    implied = json.loads(rep.read_text())
    assert implied["policy"] == "MAC budget 0.5" and implied["totals"]["mac_ratio"] < 1
    one_line_error(cli("inspect", fullrank_model, "--energy", "0.9", "--max-error", "0.1"),
                   "energy and error policies", "--policy")


def test_failed_verification_is_not_written_unless_forced(fullrank_model, tmp_path):
    out = tmp_path / "out.onnx"
    proc = cli("optimize", fullrank_model, "-o", out, "--policy", "rank", "--rank", "1", check_rc=1)
    assert "FAIL" in proc.stdout and "not written" in proc.stdout and not out.exists()
    proc = cli("optimize", fullrank_model, "-o", out, "--policy", "rank", "--rank", "1", "--force", check_rc=1)
    assert out.exists() and "--force" in proc.stdout
    # Looser, explicit tolerances make the same rewrite acceptable.
    cli("optimize", fullrank_model, "-o", out, "--policy", "rank", "--rank", "1",
        "--max-rel-error", "10", "--min-cosine", "-1", "--min-top1", "0", check_rc=0)


def test_verify_exit_codes_and_npz_inputs(lowrank_model, fullrank_model, tmp_path):
    out = tmp_path / "out.onnx"
    cli("optimize", lowrank_model, "-o", out, check_rc=0)
    npz = tmp_path / "x.npz"
    np.savez(npz, input=np.random.default_rng(0).standard_normal((5, 1, 3, 32, 32)).astype(np.float32))
    proc = cli("verify", lowrank_model, out, "--inputs", npz, check_rc=0)
    assert "5 x.npz input(s)" in proc.stdout
    stacked = tmp_path / "stacked.npz"  # the same samples stacked along the batch axis of 1: [K, 3, 32, 32]
    np.savez(stacked, input=np.load(npz)["input"][:, 0])
    again = cli("verify", lowrank_model, out, "--inputs", stacked, check_rc=0)
    assert "5 stacked.npz input(s)" in again.stdout
    assert again.stdout.split("input(s)")[1] == proc.stdout.split("input(s)")[1]  # the same metrics, to the digit
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, input=np.zeros((5, 3, 16, 32), np.float32))
    one_line_error(cli("verify", lowrank_model, out, "--inputs", wrong), "expected [K, 1, 3, 32, 32] or [K, 3, 32, 32]")
    approx = tmp_path / "approx.onnx"
    cli("optimize", fullrank_model, "-o", approx, "--policy", "rank", "--rank", "2", "--force")
    proc = cli("verify", fullrank_model, approx, check_rc=1)
    assert "FAIL" in proc.stdout and "cosine" in proc.stdout  # metrics printed even on failure


def test_verify_on_a_folder_of_images(lowrank_model, tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "out.onnx"
    proc = cli("optimize", lowrank_model, "-o", out, "--images", folder, "--mean", "0.5,0.5,0.5", "--std", "0.2,0.2,0.2", check_rc=0)
    assert "3 image(s)" in proc.stdout



def test_images_feed_a_model_of_static_batch_that_many_at_a_time(tmp_path):
    """A model exported at a fixed batch of 2 takes a folder's images two at a time (5 images: 3 samples, the last
    filled up with the first image again), for verification and for calibration; before, each image went alone and
    onnxruntime refused the feed."""
    from PIL import Image

    from onebyone.verify.inputs import ImagePreprocess, image_samples

    rgb = [np.random.default_rng(i).integers(0, 255, (40, 50, 3), dtype=np.uint8) for i in range(5)]
    prep = ImagePreprocess(32, 32, mean=(0.0,) * 3, std=(1.0,) * 3)
    batched = image_samples(rgb, "input", prep, batch=2)
    assert [s["input"].shape for s in batched] == [(2, 3, 32, 32)] * 3
    np.testing.assert_array_equal(batched[2]["input"][1], prep.apply(rgb[0])[0])
    np.testing.assert_array_equal(batched[1]["input"][0], prep.apply(rgb[2])[0])
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, image in enumerate(rgb):
        Image.fromarray(image).save(folder / f"{i}.png")
    model = generators.resnet(low_rank=0.5)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2  # a static batch of 2
    path, out = tmp_path / "b2.onnx", tmp_path / "out.onnx"
    onnx.save(model, path)
    proc = cli("optimize", path, "-o", out, "--images", folder, check_rc=0)
    assert "on 3 batches of 2 of the 5 images from" in proc.stdout
    proc = cli("inspect", path, "--calibration", folder, "--macs", "0.8", check_rc=0)  # nothing timed: no machine speed
    assert "3 held-out calibration samples" in proc.stdout
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert rel_err(run_ort(model, {"input": x})[0], run_ort(onnx.load(out), {"input": x})[0]) < 1e-5

def _identity_model(path, dtype: int, shape: list[int]):
    """A model y = Identity(x) with x of `dtype` and `shape`, saved at `path` (returned)."""
    x = helper.make_tensor_value_info("x", dtype, shape)
    y = helper.make_tensor_value_info("y", dtype, shape)
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
                                opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def test_images_of_a_bundled_model_take_its_preprocessing_and_layouts_follow_the_input(tmp_path):
    """--images on a bundled model preprocess as its own samples do (open_nsfw: NHWC, BGR, mean-subtracted pixels):
    the evaluation photos written to a folder come back as the bundled samples, to the bit (before, the generic
    NCHW default made [1, 3, 224, 3] arrays of it); on any model the layout follows the input's axis of 3 (or 1)
    channels, a gray input gets luminance, a uint8 input raw pixels, a float16 input float16 (all three failed
    before); a layout or a shape that is no image batch is a one-line error."""
    from PIL import Image

    from onebyone.models import photos
    from onebyone.models.real import real_model

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, rgb in enumerate(photos.photos(photos.EVALUATION)):
        Image.fromarray(rgb).save(folder / f"{i:02d}.png")  # lossless: the same pixels
    npz = tmp_path / "x.npz"
    proc = cli("inputs", "opennsfw", "-o", npz, "--images", folder, check_rc=0)
    assert "opennsfw's preprocessing" in " ".join(proc.stdout.split())
    got = np.load(npz)["input:0"]
    want = np.stack([s["input:0"] for s in real_model("opennsfw").samples()])
    assert got.shape == (6, 1, 224, 224, 3) and np.array_equal(got, want)
    scaled = tmp_path / "scaled.npz"  # an option given replaces that field only
    cli("inputs", "opennsfw", "-o", scaled, "--images", folder, "--scale", "2", check_rc=0)
    mean = np.array([104.0, 117.0, 123.0])  # open_nsfw's: pixels x scale (1) - mean, BGR, NHWC kept
    assert np.allclose(np.load(scaled)["input:0"] + mean, 2 * (got + mean), atol=1e-3)
    nhwc = _identity_model(tmp_path / "nhwc.onnx", TensorProto.FLOAT, [1, 32, 32, 3])
    cli("inputs", nhwc, "-o", npz, "--images", folder, check_rc=0)
    assert np.load(npz)["x"].shape == (6, 1, 32, 32, 3)
    one_line_error(cli("inputs", nhwc, "-o", npz, "--images", folder, "--layout", "NCHW"), "not NCHW with 3 color")
    flat = _identity_model(tmp_path / "flat.onnx", TensorProto.FLOAT, [1, 8])
    one_line_error(cli("inputs", flat, "-o", npz, "--images", folder), "not an image batch")
    for dtype, channels, layout in ((TensorProto.FLOAT, 1, "NCHW"), (TensorProto.UINT8, 3, "NHWC"),
                                    (TensorProto.FLOAT16, 3, "NCHW")):  # gray, raw-pixel and half inputs
        shape = [1, channels, 20, 24] if layout == "NCHW" else [1, 20, 24, channels]
        path = _identity_model(tmp_path / f"{dtype}.onnx", dtype, shape)
        cli("inputs", path, "-o", npz, "--images", folder, check_rc=0)
        got = np.load(npz)["x"]
        first = Image.fromarray(photos.photos(photos.EVALUATION)[0])
        if channels == 1:  # PIL's luminance, resized, / 255
            want = np.asarray(first.convert("L").resize((24, 20), Image.Resampling.BILINEAR), np.float32) / 255
            assert got.dtype == np.float32 and np.allclose(got[0, 0, 0], want, atol=1e-6)
        elif dtype == TensorProto.UINT8:  # raw RGB pixels
            want = np.asarray(first.resize((24, 20), Image.Resampling.BILINEAR))
            assert got.dtype == np.uint8 and np.array_equal(got[0, 0], want)
            one_line_error(cli("inputs", path, "-o", npz, "--images", folder, "--scale", "2"), "uint8", "--scale")
        else:
            assert got.dtype == np.float16 and got.shape == (6, 1, 3, 20, 24)


def test_bad_inputs_give_one_line_errors(lowrank_model, tmp_path):
    out = tmp_path / "o.onnx"
    one_line_error(cli("inspect", tmp_path / "missing.onnx"), "no such file")
    truncated = tmp_path / "trunc.onnx"
    truncated.write_bytes(lowrank_model.read_bytes()[:3000])
    one_line_error(cli("optimize", truncated, "-o", out), "trunc.onnx", "not a valid ONNX model")
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    one_line_error(cli("inspect", text), "not")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    one_line_error(cli("inspect", empty), "empty file")
    old = generators.vgg()
    old.opset_import[0].version = 999
    onnx.save(old, tmp_path / "future.onnx")
    one_line_error(cli("inspect", tmp_path / "future.onnx"), "unsupported opset 999")
    one_line_error(cli("inspect", lowrank_model, "--input-shape", "images:1x3x32x32"), "unknown input name 'images'")
    one_line_error(cli("inspect", lowrank_model, "--input-shape", "input:1x3xAx32"), "--input-shape")
    npz = tmp_path / "bad.npz"
    np.savez(npz, image=np.zeros((1, 1, 3, 32, 32), np.float32))
    one_line_error(cli("optimize", lowrank_model, "-o", out, "--inputs", npz), "unknown input name 'image'")
    one_line_error(cli("optimize", lowrank_model, "-o", out, "--policy", "rank"), "--rank")
    one_line_error(cli("optimize", lowrank_model, "-o", lowrank_model), "refusing to overwrite the input")
    one_line_error(cli("inspect", "no-such-bundled-model"), "no such file")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9, 9])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    conv = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", dilations=[2, 2])  # valid ONNX
    weight = numpy_helper.from_array(np.ones((4, 4, 3, 3), np.float32), "w")
    onnx.save(helper.make_model(helper.make_graph([conv], "g", [x], [y], [weight]), ir_version=8,
                                opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "dilated.onnx")
    # onnxruntime loads it but fails when running it: its own log line must not print beside onebyone's
    one_line_error(cli("optimize", tmp_path / "dilated.onnx", "-o", out), "onnxruntime", "Dilation not supported")
    assert not out.exists()



def test_a_graph_out_of_topological_order_is_sorted_and_a_cycle_is_corrupt(tmp_path):
    """Nodes out of topological order (onnxruntime runs them; float16 converters with keep_io_types write them):
    the model is rewritten losslessly, written sorted (the ONNX full check passes) and the input file is untouched. A
    graph with a cycle, or a node input nothing defines, is a one-line 'corrupt ONNX model' error naming it (onnx-ir's
    own warning on the undefined input is not printed beside it)."""
    model = generators.resnet(low_rank=0.5)
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(model)
    path, out = tmp_path / "unsorted.onnx", tmp_path / "out.onnx"
    onnx.save(model, path)
    before = digest(path)
    proc = cli("optimize", path, "-o", out, check_rc=0)
    assert "lossless" in proc.stdout and digest(path) == before
    written = onnx.load(out)
    onnx.checker.check_model(written, full_check=True)
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert rel_err(run_ort(model, {"input": x})[0], run_ort(written, {"input": x})[0]) < 1e-5
    cycle = helper.make_graph([helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(cycle, ir_version=8, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "c.onnx")
    one_line_error(cli("inspect", tmp_path / "c.onnx"), "c.onnx", "corrupt ONNX model", "cycle")
    dangling = helper.make_graph([helper.make_node("Add", ["x", "zz"], ["b"], name="add")], "g",
                                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                                 [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(dangling, ir_version=8, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "d.onnx")
    one_line_error(cli("inspect", tmp_path / "d.onnx"), "corrupt ONNX model",
                   "input 'zz' of Add node 'add' is produced by no node")


def test_exclude_on_the_command_line(lowrank_model):
    """`--exclude GLOB` (repeatable) skips the matching convs with the pattern in the table; a glob that matches no conv
    is a one-line error naming it."""
    proc = cli("inspect", lowrank_model, "--exclude", "conv1*", "--exclude", "conv7", check_rc=0)
    assert proc.stdout.count("excluded by pattern 'conv1*'") == 3 and "excluded by pattern 'conv7'" in proc.stdout
    assert "would be rewritten" in proc.stdout
    one_line_error(cli("inspect", lowrank_model, "--exclude", "stem/*"),
                   "exclude pattern 'stem/*' (--exclude) matches no conv")


def test_unsupported_op_is_named(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("FancyOp", ["x"], ["y"], domain="com.example")], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    one_line_error(cli("verify", path, path), "FancyOp")


def test_models_command_lists_bundled_models():
    proc = cli("models", check_rc=0)
    for name in ("opennsfw", "ppocr-det", "basic-pitch"):
        assert name in proc.stdout


def test_verify_models_with_different_inputs_is_a_one_line_error(lowrank_model, tmp_path):
    other = generators.vgg()
    other.graph.input[0].name = "image"
    for n in other.graph.node:
        n.input[:] = ["image" if i == "input" else i for i in n.input]
    path = tmp_path / "other.onnx"
    onnx.save(other, path)
    one_line_error(cli("verify", lowrank_model, path), "needs input 'image'")


def test_calibrated_optimize_and_inspect(tmp_path, fullrank_model):
    npz = tmp_path / "calib.npz"
    np.savez(npz, input=np.random.default_rng(3).standard_normal((8, 1, 3, 32, 32)).astype(np.float32))
    rep, png, out = tmp_path / "r.json", tmp_path / "curves.png", tmp_path / "o.onnx"
    proc = cli("inspect", fullrank_model, "--policy", "budget", "--macs", "0.7", "--calibration", npz,
               "--report", rep, "--plot", png, check_rc=0)
    report = json.loads(rep.read_text())
    assert report["method"] == "data" and report["calibration"]["samples"] == 8
    curves = [l["error_curve"] for l in report["layers"] if l["error_curve"]]
    assert curves and all(c[0] == pytest.approx(1.0) and c[-1] < 1e-3 for c in curves)
    assert png.read_bytes()[:4] == b"\x89PNG" and "err pred / meas" in proc.stdout
    cli("optimize", fullrank_model, "-o", out, "--policy", "budget", "--macs", "0.7", "--calibration", npz,
        "--cache-dir", tmp_path / "cache", "--force", "--report", rep)
    report = json.loads(rep.read_text())
    assert all(l["measured_error"] is not None for l in report["layers"] if l["action"] == "rewritten")
    assert list((tmp_path / "cache").glob("moments-*.npz"))
    one_line_error(cli("optimize", fullrank_model, "-o", out, "--method", "data"), "--calibration")
    one_line_error(cli("optimize", fullrank_model, "-o", out, "--calibration", "bundled"), "bundled models only")
    one_line_error(cli("optimize", fullrank_model, "-o", out, "--policy", "budget"), "--macs")
    one_line_error(cli("optimize", fullrank_model, "-o", out, "--policy", "error", "--max-error", "0.1"), "--calibration")


def test_exit_status_contract_for_usage_and_internal_errors(lowrank_model, monkeypatch, capsys):
    """Usage errors are one line and exit 2; an internal error is one line and exit 3, its traceback only with
    --debug; --version prints the version."""
    from onebyone import __version__, api
    from onebyone import cli as cli_module

    def run(*args):
        with pytest.raises(SystemExit) as info:
            cli_module.main([str(a) for a in args])
        out = capsys.readouterr()
        return info.value.code, out.out, out.err

    code, out, _ = run("--version")
    assert code == 0 and __version__ in out
    for args, needle in ((("optimize", lowrank_model), "Missing option"), (("inspect", lowrank_model, "--bogus"), "--bogus"),
                         (("nosuch",), "No such command"), (("optimize", lowrank_model, "-o", "x.onnx", "--rank", "abc"), "--rank")):
        code, _, err = run(*args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err

    def broken(*a, **k):
        raise RuntimeError("something inside broke")

    monkeypatch.setattr(api, "inspect", broken)
    code, _, err = run("inspect", lowrank_model)
    assert code == 3 and err.strip().splitlines() == [
        "onebyone: internal error: RuntimeError: something inside broke (rerun with --debug for the traceback)"]
    code, _, err = run("inspect", lowrank_model, "--debug")
    assert code == 3 and "Traceback" in err and err.strip().endswith("something inside broke")


def test_pointwise_form_rewrites_1x1_convs_with_data_and_bad_forms_are_one_line_errors(tmp_path):
    """--forms input,pointwise makes 1x1 convs candidates (the default leaves them with a reason); a data-aware
    budget then rewrites some of them, verified against the original in onnxruntime."""
    model = tmp_path / "r.onnx"
    onnx.save(generators.resnet_bottleneck(size=32, width=8, blocks=(1, 1), classes=10), model)
    npz = tmp_path / "calib.npz"
    np.savez(npz, input=np.random.default_rng(3).standard_normal((8, 1, 3, 32, 32)).astype(np.float32))
    rep, out = tmp_path / "r.json", tmp_path / "o.onnx"
    cli("inspect", model, "--report", rep, check_rc=0)
    layers = json.loads(rep.read_text())["layers"]
    assert {l["form"] for l in layers} == {"input", "pointwise"}
    assert all("pointwise form is off" in l["reason"] for l in layers if l["form"] == "pointwise")
    cli("optimize", model, "-o", out, "--policy", "budget", "--macs", "0.6", "--forms", "input,pointwise",
        "--calibration", npz, "--cost", "macs", "--max-rel-error", "1", "--min-cosine", "0", "--report", rep, check_rc=0)
    layers = json.loads(rep.read_text())["layers"]
    assert any(l["form"] == "pointwise" and l["action"] == "rewritten" for l in layers)
    assert all(l["measured_error"] is not None for l in layers if l["action"] == "rewritten")
    one_line_error(cli("inspect", model, "--forms", "input,tucker9"), "--forms", "tucker9")
    one_line_error(cli("inspect", model, "--forms", ","), "--forms")


def test_output_form_on_the_command_line_says_why_and_is_checked_against_input_only(tmp_path):
    """--forms input,output with data: a budget's rewrite is measured on held-out calibration samples against
    weight-only and against the input form alone at the same budget, the best kept and verified; where the output
    form is in the kept model, every rewritten kxk conv says which form it took and why (both predicted errors)."""
    model = tmp_path / "r.onnx"
    onnx.save(generators.resnet_bottleneck(size=32, width=8, blocks=(1, 1), classes=10), model)
    npz = tmp_path / "calib.npz"
    np.savez(npz, input=np.random.default_rng(3).standard_normal((8, 1, 3, 32, 32)).astype(np.float32))
    rep, out = tmp_path / "r.json", tmp_path / "o.onnx"
    proc = cli("optimize", model, "-o", out, "--policy", "budget", "--macs", "0.6", "--forms", "input,output",
               "--calibration", npz, "--cost", "macs", "--max-rel-error", "1", "--min-cosine", "0", "--report", rep,
               check_rc=0)
    report = json.loads(rep.read_text())
    check = report["method_check"]
    assert set(check_errors(check)) == {"data", "weight", "data without the output form"}
    assert check["kept"] == expected_kept(check)
    wins = ", ".join(f"{k} {v:.0%}" for k, v in check["confidence"].items())
    said = " ".join(proc.stdout.split())
    assert f"resamples of them in which it beat weight-only: {wins}; kept over it from 90%" in said
    assert "on 2 held-out calibration input(s)" in said and report["verification"]["samples"] == 2  # real, not random
    assert "give inputs the fit never saw for an independent verdict" in said
    assert report["verification"]["passed"] and out.is_file()
    spatial = [l for l in report["layers"] if l["kernel"] != [1, 1] and l["action"] == "rewritten"]
    assert spatial
    for l in spatial:
        if check["kept"] == "data":  # both forms were weighed for every kxk conv
            assert "input" in l["form_choice"] and "output" in l["form_choice"], l
        else:  # input form alone, or weight-only (whose output form would need data: none is lossless here)
            assert l["form"] == "input", l


def test_tucker2_form_on_the_command_line_is_lossless_and_shows_both_ranks(tmp_path):
    """--forms input,output,tucker2 --policy exact on a conv low-rank on both channel sides: the cheapest lossless
    form is Tucker-2, the table marks it with its two ranks, the report has them, and the model is verified."""
    from onebyone.models.single_conv import single_conv_model
    from onebyone.models.weights import low_rank_tucker2_weight

    rng = np.random.default_rng(5)
    model = tmp_path / "t.onnx"
    onnx.save(single_conv_model((1, 32, 16, 16), low_rank_tucker2_weight(32, 32, (3, 3), 1, 6, rng),
                                rng.standard_normal(32).astype(np.float32), pads=(1, 1, 1, 1)), model)
    rep, out = tmp_path / "t.json", tmp_path / "o.onnx"
    done = cli("optimize", model, "-o", out, "--policy", "exact", "--forms", "input,output,tucker2", "--report", rep,
               check_rc=0)
    assert "6 t2 (6,6)" in done.stdout
    (layer,) = json.loads(rep.read_text())["layers"]
    assert (layer["form"], layer["ranks"], layer["lossless"]) == ("tucker2", [6, 6], True), layer
    x = rng.standard_normal((1, 32, 16, 16)).astype(np.float32)
    assert rel_err(run_ort(onnx.load(model), {"x": x})[0], run_ort(onnx.load(out), {"x": x})[0]) <= 1e-5
