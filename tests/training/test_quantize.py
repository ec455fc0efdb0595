"""Quantization for real: the tiny model the training code trains, quantized to INT8 (QDQ), evaluated, archived.

The INT8 file must load, carry QDQ nodes around its convolutions, keep the decoding tail in float,
answer in the detection contract's shape, and stay close to the FP32 model on the same frames.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from shared.contracts import INT8_MODEL_FILE, REQUIRED_METRICS, ModelManifest, ModelVariant
from training import quantize as quantize_command
from training.steps.evaluate import read_model_archive
from training.steps.quantize import (
    QDQ_OPS,
    QuantizationError,
    add_int8_variant,
    calibration_frames,
    compare_outputs,
    float_nodes,
    int8_variant,
    letterbox,
    quantize_evaluate_and_add,
    quantize_model,
    read_rgb,
)

CALIBRATION_IMAGES = 16
# The pipeline calibrates on up to 100 training images. On the trained fixture 16 left INT8's top score 0.07
# below FP32's (measured), 64 keep it within 0.01: the accuracy check calibrates as the pipeline does.
TRAINED_CALIBRATION_IMAGES = 64


@pytest.fixture(scope="module")
def quantized(tiny_model, tmp_path_factory):
    """The tiny model quantized on its own training images."""
    train_images = tiny_model.run.prepared.root / "images" / "train"
    output = tmp_path_factory.mktemp("int8") / INT8_MODEL_FILE
    return quantize_model(tiny_model.onnx_path, train_images, output, max_images=CALIBRATION_IMAGES)


def frames_of(paths, size):
    return [letterbox(read_rgb(Path(path)), size) for path in paths]


# --------------------------------------------------------------------------------------------------
# The INT8 model
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_int8_model_loads_and_keeps_the_detection_contract(tiny_model, quantized):
    fp32 = ort.InferenceSession(str(tiny_model.onnx_path), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(quantized.output), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape, i.type) for i in int8.get_inputs()] == [
        (i.name, i.shape, i.type) for i in fp32.get_inputs()
    ]
    assert [(o.name, o.shape) for o in int8.get_outputs()] == [(o.name, o.shape) for o in fp32.get_outputs()]
    frame = frames_of([tiny_model.samples[0].path], tiny_model.input_size)[0]
    (output,) = int8.run(None, {"images": frame})
    assert output.dtype == np.float32
    assert output.shape == (1, 4 + len(tiny_model.class_names), fp32.get_outputs()[0].shape[2])
    metadata = int8.get_modelmeta().custom_metadata_map
    assert metadata["precision"] == "int8"
    for key in ("names", "stride", "imgsz", "task"):  # what Ultralytics and the device read
        assert metadata[key] == fp32.get_modelmeta().custom_metadata_map[key]
    assert quantized.calibration_images == CALIBRATION_IMAGES
    assert quantized.details()["calibration_images"] == CALIBRATION_IMAGES


@pytest.mark.slow
def test_every_convolution_outside_the_decoding_tail_runs_on_int8_weights(tiny_model, quantized):
    model = onnx.load(str(quantized.output))
    producers = {output: node for node in model.graph.node for output in node.output}
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    kept_float = set(quantized.float_nodes)
    convolutions = [node for node in model.graph.node if node.op_type == "Conv"]
    assert len(convolutions) == sum(n.op_type == "Conv" for n in onnx.load(str(tiny_model.onnx_path)).graph.node)
    quantized_convs = 0
    for conv in convolutions:
        weight = producers.get(conv.input[1])
        if conv.name in kept_float:
            assert weight is None, f"{conv.name} is in the decoding tail and must keep float weights"
            continue
        assert weight is not None and weight.op_type == "DequantizeLinear", f"{conv.name} has float weights"
        assert initializers[weight.input[0]].data_type == TensorProto.INT8
        data = producers.get(conv.input[0])
        assert data is not None and data.op_type == "DequantizeLinear", f"{conv.name} reads float activations"
        quantized_convs += 1
    assert quantized_convs >= 60  # YOLOv8n: 63 convolutions besides the DFL's
    assert quantized.quantized_nodes == sum(node.op_type in QDQ_OPS for node in model.graph.node)
    # The output is computed in float from float inputs: one 8-bit scale cannot hold pixels and scores.
    (output,) = model.graph.output
    last = producers[output.name]
    assert last.op_type == "Concat" and last.name in kept_float
    assert all(producers[name].op_type not in QDQ_OPS for name in last.input)


@pytest.mark.slow
def test_the_decoding_tail_is_the_box_decoding_and_the_class_sigmoid(tiny_model):
    model = onnx.load(str(tiny_model.onnx_path))
    tail = set(float_nodes(model))
    kinds = {node.name: node.op_type for node in model.graph.node}
    assert {kinds[name] for name in tail} >= {"Concat", "Softmax", "Sigmoid", "Conv", "Reshape"}
    assert [name for name in tail if kinds[name] == "Conv"] == [
        n.name for n in model.graph.node if n.op_type == "Conv" and "dfl" in n.name
    ]  # the DFL's expectation over distance bins, fed by the Softmax
    assert len(tail) < 40 < len(model.graph.node) - len(tail)


@pytest.mark.slow
def test_the_int8_model_stays_close_to_fp32_on_the_same_frames(trained_model, tmp_path):
    """On a model that detects: the candidates FP32 is sure of keep their place, size and score in INT8."""
    result = quantize_model(
        trained_model.onnx_path,
        trained_model.run.prepared.root / "images" / "train",
        tmp_path / INT8_MODEL_FILE,
        max_images=TRAINED_CALIBRATION_IMAGES,
    )
    frames = frames_of([sample.path for sample in trained_model.samples], trained_model.input_size)
    agreement = compare_outputs(trained_model.onnx_path, result.output, frames)
    assert agreement["top_score_fp32"] >= 0.25, "the model should detect scratches"
    assert abs(agreement["top_score_int8"] - agreement["top_score_fp32"]) <= 0.05
    assert agreement["max_score_difference"] <= 0.1
    assert agreement["mean_box_difference_px"] <= 1.0  # input pixels, of boxes FP32 scores above 0.25
    fp32 = ort.InferenceSession(str(trained_model.onnx_path), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(result.output), providers=["CPUExecutionProvider"])
    for frame in frames:
        (reference,), (approximate,) = fp32.run(None, {"images": frame}), int8.run(None, {"images": frame})
        best = np.argsort(-reference[0, 4:].max(axis=0))[:20]  # the candidates NMS looks at first
        assert np.corrcoef(reference[0, 4:, best].ravel(), approximate[0, 4:, best].ravel())[0, 1] > 0.95


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


def _tiny_detector_onnx(path: Path, *, opset: int = 17) -> Path:
    """Conv -> Sigmoid -> [1, 5, 16]: enough graph for the checks that come before calibration."""
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["images", "w"], ["features"], name="conv", kernel_shape=[8, 8], strides=[8, 8]),
            helper.make_node("Reshape", ["features", "shape"], ["flat"], name="reshape"),
            helper.make_node("Sigmoid", ["flat"], ["output0"], name="sigmoid"),
        ],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 5, 16])],
        initializer=[
            numpy_helper.from_array(np.random.default_rng(0).normal(size=(5, 3, 8, 8)).astype(np.float32), "w"),
            numpy_helper.from_array(np.array([1, 5, 16], dtype=np.int64), "shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def _calibration_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    for index in range(3):
        Image.new("RGB", (64, 48), (index * 60, 90, 120)).save(path / f"tag-{index}.png")
    return path


def _two_input_onnx(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Add", ["images", "mask"], ["output0"], name="add")],
        "two-inputs",
        [
            helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 3, 32, 32]),
        ],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 3, 32, 32])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.write_bytes(model.SerializeToString())
    return path


def _same_file_spellings(model: Path) -> dict[str, Path]:
    """Other names of `model`: the same path, a roundabout spelling, a symlink, a hard link."""
    (model.parent / "sub").mkdir()
    (model.parent / "link.onnx").symlink_to(model)
    (model.parent / "hard.onnx").hardlink_to(model)
    return {
        "same": model,
        "spelled-differently": model.parent / "sub" / ".." / "." / model.name,
        "symlink": model.parent / "link.onnx",
        "hard-link": model.parent / "hard.onnx",
    }


@pytest.mark.parametrize("spelling", ["same", "spelled-differently", "symlink", "hard-link"])
def test_the_output_may_not_be_the_model_itself(tmp_path, spelling):
    model = _tiny_detector_onnx(tmp_path / "model.onnx")
    before = model.read_bytes()
    output = _same_file_spellings(model)[spelling]
    calibration = _calibration_folder(tmp_path / "calibration")
    listing = sorted(tmp_path.rglob("*"))
    with pytest.raises(QuantizationError, match="would overwrite the FP32 model") as raised:
        quantize_model(model, calibration, output)
    assert str(model) in str(raised.value) and str(output) in str(raised.value)
    assert model.read_bytes() == before  # the source is never overwritten
    assert sorted(tmp_path.rglob("*")) == listing  # nothing written, no .partial left


def test_the_output_may_not_be_where_the_model_is_staged(tmp_path):
    """The INT8 file is written next to the output as `<output>.partial` first: that may not be the model either."""
    model = _tiny_detector_onnx(tmp_path / "q.onnx.partial")
    before = model.read_bytes()
    with pytest.raises(QuantizationError, match=r"q\.onnx\.partial"):
        quantize_model(model, _calibration_folder(tmp_path / "calibration"), tmp_path / "q.onnx")
    assert model.read_bytes() == before and not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("opset", [11, 12])
def test_a_model_below_opset_13_is_refused_before_any_work(tmp_path, opset):
    """Per-channel QDQ needs DequantizeLinear's `axis` (opset 13): say so instead of onnxruntime's riddle."""
    model = _tiny_detector_onnx(tmp_path / "model.onnx", opset=opset)
    output = tmp_path / "out" / "int8.onnx"
    with pytest.raises(QuantizationError) as raised:
        quantize_model(model, tmp_path / "no-calibration-needed", output)
    assert str(raised.value) == (
        f"{model}: ONNX opset {opset}; INT8 quantization (per-channel QDQ) needs opset 13 or later: "
        "export the model again with a newer opset"
    )
    assert not (tmp_path / "out").exists()


def test_a_model_with_more_than_one_input_is_refused_naming_its_inputs(tmp_path):
    model = _two_input_onnx(tmp_path / "two.onnx")
    with pytest.raises(QuantizationError) as raised:
        quantize_model(model, _calibration_folder(tmp_path / "calibration"), tmp_path / "int8.onnx")
    assert str(raised.value) == (
        f"{model}: the model has 2 inputs (images, mask); expected one image input [1, 3, S, S], "
        "as a YOLOv8 detection export has"
    )
    assert not (tmp_path / "int8.onnx").exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda folder: None, r"has no readable image: no \.jpg/\.jpeg/.* file"),
        (lambda folder: (folder / "notes.txt").write_text("not an image"), r"has no readable image: no \.jpg"),
        (
            lambda folder: [(folder / name).write_bytes(b"\xff\xd8\xff\xe0 garbage") for name in ("a.jpg", "b.png")],
            r"has no readable image: 2 image file\(s\), none readable",
        ),
    ],
    ids=["empty", "no-images", "unreadable-images"],
)
def test_a_calibration_folder_without_a_readable_image_is_refused_naming_it(tmp_path, make, message):
    folder = tmp_path / "calibration"
    folder.mkdir()
    make(folder)
    with pytest.raises(QuantizationError, match=message) as raised:
        quantize_model(_tiny_detector_onnx(tmp_path / "model.onnx"), folder, tmp_path / "int8.onnx")
    assert f"calibration folder {folder} " in str(raised.value)
    assert not (tmp_path / "int8.onnx").exists()


def test_a_missing_calibration_folder_and_a_broken_model_are_refused(tmp_path):
    with pytest.raises(QuantizationError, match=f"calibration folder {tmp_path / 'gone'} does not exist"):
        calibration_frames(tmp_path / "gone", size=32)
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07 not a model")
    with pytest.raises(QuantizationError, match=r"broken\.onnx: cannot read the ONNX model"):
        quantize_model(tmp_path / "broken.onnx", tmp_path, tmp_path / "int8.onnx")


def test_unreadable_calibration_images_are_skipped_and_the_rest_used(tmp_path, caplog):
    folder = tmp_path / "calibration" / "nested"
    folder.mkdir(parents=True)
    for index in range(3):
        Image.new("RGB", (64, 48), (index * 50, 90, 90)).save(folder / f"tag-{index}.jpg")
    (folder / "tag-9.jpg").write_bytes(b"truncated")
    frames = calibration_frames(tmp_path / "calibration", size=32, limit=10)
    assert len(frames) == 3 and frames[0].shape == (1, 3, 32, 32) and frames[0].dtype == np.float32
    assert "1 unreadable image(s) skipped: tag-9.jpg" in caplog.text
    # At most `limit`, spread over the folder.
    assert len(calibration_frames(tmp_path / "calibration", size=32, limit=2)) == 2


def test_unreadable_files_of_the_even_spread_are_replaced_by_readable_ones(tmp_path, caplog):
    folder = tmp_path / "calibration"
    folder.mkdir()
    for name, readable in (("a", False), ("b", True), ("c", False), ("d", True)):
        if readable:
            Image.new("RGB", (64, 48), (90, 90, 90)).save(folder / f"{name}.jpg")
        else:
            (folder / f"{name}.jpg").write_bytes(b"truncated")
    frames = calibration_frames(folder, size=32, limit=2)  # the spread picks a and c: both unreadable
    assert len(frames) == 2
    assert "2 unreadable image(s) skipped: a.jpg, c.jpg" in caplog.text


def test_a_calibration_folder_that_cannot_be_listed_is_refused_naming_it(tmp_path, monkeypatch):
    def refuse(self, pattern):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "rglob", refuse)
    with pytest.raises(QuantizationError, match=f"calibration folder {tmp_path} cannot be read \\(.*Permission denied"):
        calibration_frames(tmp_path, size=32)


def test_the_calibration_letterbox_is_ultralytics_letterbox(tmp_path):
    import cv2
    from ultralytics.data.augment import LetterBox

    path = tmp_path / "frame.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (45, 77, 3), dtype=np.uint8)).save(path)
    expected = LetterBox((64, 64), auto=False, stride=32)(image=cv2.imread(str(path)))
    expected = (expected[..., ::-1].transpose(2, 0, 1)[None] / np.float32(255)).astype(np.float32)
    np.testing.assert_array_equal(letterbox(read_rgb(path), 64), expected)


# --------------------------------------------------------------------------------------------------
# Evaluation and the archive
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_archive_ships_int8_beside_fp32_with_both_metrics(tiny_model, tmp_path):
    archive = tmp_path / "model.tar.gz"
    shutil.copy(tiny_model.archive, archive)
    with tarfile.open(archive) as tar:
        before = tar.getnames()
    fp32_metrics = dict(tiny_model.run.evaluation.metrics)
    outcome = quantize_evaluate_and_add(
        archive,
        tiny_model.onnx_path,
        tiny_model.run.prepared.root,
        fp32_metrics=fp32_metrics,
        image_size=tiny_model.input_size,
        confidence_threshold=tiny_model.manifest.confidence_threshold,
        iou_threshold=tiny_model.manifest.iou_threshold,
        work_dir=tmp_path / "work",
        max_images=CALIBRATION_IMAGES,
    )
    manifest, onnx_bytes, names = read_model_archive(archive)
    assert names == [*before, INT8_MODEL_FILE]  # everything else kept, in order
    assert onnx_bytes == tiny_model.onnx_path.read_bytes()  # model.onnx is still the FP32 model
    assert manifest.metrics == tiny_model.manifest.metrics
    int8 = manifest.variant("int8")
    assert int8 is not None and int8.file == INT8_MODEL_FILE
    assert set(int8.metrics) == set(REQUIRED_METRICS)
    assert int8.metrics == outcome.comparison.int8 and outcome.comparison.fp32 == fp32_metrics
    assert int8.details["calibration_images"] == CALIBRATION_IMAGES
    assert outcome.comparison.map50_loss == pytest.approx(fp32_metrics["mAP50"] - int8.metrics["mAP50"])
    assert set(outcome.comparison.to_json()["loss"]) == set(REQUIRED_METRICS)
    report = json.loads(json.dumps(outcome.to_json()))
    assert report["file"] == INT8_MODEL_FILE and report["int8"] == int8.metrics and report["fp32"] == fp32_metrics
    assert report["details"]["float_nodes"] == len(outcome.quantization.float_nodes) > 0
    with tarfile.open(archive) as tar:
        member = tar.extractfile(INT8_MODEL_FILE)
        assert member is not None and member.read() == outcome.quantization.output.read_bytes()
        document = json.loads(tar.extractfile("model.json").read())  # type: ignore[union-attr]
    assert document["precisions"]["fp32"] == {"file": "model.onnx", "metrics": tiny_model.manifest.metrics}


@pytest.mark.slow
def test_adding_int8_again_replaces_the_previous_int8_file(tiny_model, quantized, tmp_path):
    archive = tmp_path / "model.tar.gz"
    shutil.copy(tiny_model.archive, archive)
    first = int8_variant(quantized, {**tiny_model.manifest.metrics, "mAP50": 0.1})
    second = int8_variant(quantized, {**tiny_model.manifest.metrics, "mAP50": 0.2})
    add_int8_variant(archive, quantized.output, first)
    add_int8_variant(archive, quantized.output, second)
    manifest, _, names = read_model_archive(archive)
    assert names.count(INT8_MODEL_FILE) == 1
    assert [variant.metrics["mAP50"] for variant in manifest.variants] == [0.2]
    assert ModelManifest.from_json(manifest.to_json()) == manifest
    assert not list(tmp_path.glob("*.partial"))


def test_an_archive_without_the_model_files_is_not_rewritten(tmp_path):
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(_tiny_detector_onnx(tmp_path / "model.onnx"), arcname="other.onnx")
    before = archive.read_bytes()
    entry = ModelVariant(precision="int8", file=INT8_MODEL_FILE, metrics=dict.fromkeys(REQUIRED_METRICS, 0.5))
    with pytest.raises(QuantizationError, match=r"no model\.onnx and model\.json at the archive root"):
        add_int8_variant(archive, tmp_path / "model.onnx", entry)
    assert archive.read_bytes() == before
    assert not list(tmp_path.glob("*.partial"))


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_command_quantizes_any_model_and_reports_the_agreement(tiny_model, tmp_path, capsys):
    output = tmp_path / "out" / "q.onnx"
    calibration = tiny_model.images_dir
    code = quantize_command.main(
        ["--model", str(tiny_model.onnx_path), "--calibration", str(calibration), "--output", str(output)]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert output.is_file()
    assert f"INT8 model: {output}" in printed.out
    assert f"calibrated on {len(tiny_model.samples)} image(s) (minmax)" in printed.out
    assert "decoding nodes kept in float" in printed.out and "largest class score difference" in printed.out


def test_the_command_fails_with_a_message_naming_the_bad_folder(tmp_path, capsys):
    model = _tiny_detector_onnx(tmp_path / "model.onnx")
    (tmp_path / "empty").mkdir()
    code = quantize_command.main(
        ["--model", str(model), "--calibration", str(tmp_path / "empty"), "--output", str(tmp_path / "q.onnx")]
    )
    assert code == 1
    assert f"error: calibration folder {tmp_path / 'empty'} has no readable image" in capsys.readouterr().err
    assert quantize_command.main(["--model", str(tmp_path / "none.onnx"), "--calibration", "x", "--output", "y"]) == 1
    assert "model " in capsys.readouterr().err


def test_the_command_refuses_to_write_over_its_model(tmp_path, capsys):
    model = _tiny_detector_onnx(tmp_path / "model.onnx")
    before = model.read_bytes()
    calibration = _calibration_folder(tmp_path / "calibration")
    spelled = calibration / ".." / "model.onnx"
    code = quantize_command.main(["--model", str(model), "--calibration", str(calibration), "--output", str(spelled)])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(model) in err and str(spelled) in err and "Traceback" not in err
    assert model.read_bytes() == before


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path: _tiny_detector_onnx(path, opset=12), "ONNX opset 12; INT8 quantization"),
        (_two_input_onnx, r"the model has 2 inputs \(images, mask\)"),
    ],
    ids=["opset-12", "two-inputs"],
)
def test_the_command_explains_a_model_it_cannot_quantize(tmp_path, capsys, make, message):
    model = make(tmp_path / "model.onnx")
    calibration = _calibration_folder(tmp_path / "calibration")
    code = quantize_command.main(
        ["--model", str(model), "--calibration", str(calibration), "--output", str(tmp_path / "q.onnx")]
    )
    err = capsys.readouterr().err
    assert code == 1, err
    assert re.match(rf"error: {re.escape(str(model))}: .*{message}", err) and "Traceback" not in err


# --------------------------------------------------------------------------------------------------
# The evaluation step ships both precisions
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_training_run_ships_int8_scored_on_the_same_test_images(trained_model):
    run = trained_model.run
    int8 = run.evaluation.int8
    assert int8 is not None and "error" not in int8
    assert int8["fp32"] == run.evaluation.metrics and set(int8["int8"]) == set(REQUIRED_METRICS)
    paired = int8["int8_minus_fp32"]  # image by image on the very test images FP32 was scored on
    assert paired["images"] == run.prepared.counts["test"]
    assert paired["difference"]["mAP50"] == pytest.approx(int8["int8"]["mAP50"] - int8["fp32"]["mAP50"], abs=1e-9)
    manifest, _, names = read_model_archive(run.archive)
    assert INT8_MODEL_FILE in names and manifest.variant("int8").metrics == int8["int8"]
    assert "<h2>INT8 model</h2>" in run.report_path.read_text()


def evaluate_with_int8(tiny_model, folder: Path, *, map50_95_threshold: float):
    """The pipeline's Evaluate step on the tiny model, INT8 on: (evaluation, archive)."""
    from training.steps.evaluate import evaluate_and_package

    return evaluate_and_package(
        tiny_model.onnx_path,
        tiny_model.run.prepared.root,
        evaluation_dir=folder / "evaluation",
        package_dir=folder / "package",
        image_size=tiny_model.input_size,
        confidence_threshold=0.25,
        iou_threshold=0.45,
        map50_95_threshold=map50_95_threshold,
        regression_margin=0.02,
        onnx_opset=17,
        work_dir=folder / "work",
        quantize_int8=True,
    )


def test_a_model_that_cannot_be_quantized_ships_as_fp32_with_the_reason(tiny_model, tmp_path, monkeypatch):
    from training.steps import quantize

    def refuse(*_args, **_kwargs):
        raise quantize.QuantizationError("calibration folder x holds no readable image")

    monkeypatch.setattr(quantize, "quantize_model", refuse)
    evaluation, archive = evaluate_with_int8(tiny_model, tmp_path, map50_95_threshold=0.5)
    assert evaluation.report.int8 == {"error": "calibration folder x holds no readable image"}
    manifest, _, names = read_model_archive(archive)
    assert INT8_MODEL_FILE not in names and manifest.variant("int8") is None
    page = (tmp_path / "evaluation" / "report" / "index.html").read_text()
    assert "Not made: calibration folder x holds no readable image" in page


@pytest.mark.parametrize(
    "case",
    [
        (
            "quantize_model",
            RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Load model failed"),
            "RuntimeError: [ONNXRuntimeError] : 1 : FAIL : Load model failed",
        ),
        ("evaluate_int8", KeyError("mAP50"), "KeyError: 'mAP50'"),
    ],
    ids=["quantizer", "int8-evaluation"],
)
def test_any_failure_of_the_int8_part_ships_fp32_with_the_reason(tiny_model, tmp_path, monkeypatch, caplog, case):
    """onnxruntime's quantization tools and the INT8 scoring raise more than QuantizationError: a model that
    passed its FP32 gate is still packaged (and so registered), without INT8, saying why."""
    from training.steps import quantize

    failing, error, reason = case

    def fail(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(quantize, failing, fail)
    with caplog.at_level(logging.ERROR, logger="training.steps.evaluate"):
        evaluation, archive = evaluate_with_int8(tiny_model, tmp_path, map50_95_threshold=0.0)
    assert evaluation.report.int8 == {"error": reason}
    assert evaluation.decision.verdict == "register"  # the FP32 gate's verdict stands
    assert evaluation.report.registry_metadata["verdict"] == "register"
    manifest, onnx_bytes, names = read_model_archive(archive)
    assert onnx_bytes == tiny_model.onnx_path.read_bytes() and manifest.metrics == evaluation.report.metrics
    assert INT8_MODEL_FILE not in names and manifest.variant("int8") is None
    written = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert written["int8"] == {"error": reason}
    assert f"Not made: {reason}" in (tmp_path / "evaluation" / "report" / "index.html").read_text().replace(
        "&#x27;", "'"
    )
    (record,) = [r for r in caplog.records if r.name == "training.steps.evaluate"]
    assert record.exc_info is not None and record.exc_info[1] is error  # the traceback is in the log
