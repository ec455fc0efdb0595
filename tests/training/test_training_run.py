"""Steps 3-4 for real: a tiny YOLOv8 trained on synthetic tags, its ONNX export, test-split evaluation, the archive.

The model is trained once per session (`tiny_model`); the resume and command-line tests train a few
more seconds each at 64 px.
"""

from __future__ import annotations

import json
import re
import tarfile

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from shared.contracts import REQUIRED_METRICS, ModelManifest
from tests.model_fixtures import SMALL_SPLITS
from training import local
from training.steps.evaluate import EVALUATION_FILE, read_model_archive
from training.steps.evaluation_results import EvaluationReport
from training.steps.gate import decide
from training.steps.prepare import PreparedDataset
from training.steps.train import (
    BEST_PREFIX,
    METRICS_PREFIX,
    TrainConfig,
    TrainingError,
    check_onnx_model,
    mixed_precision_works,
    offline_ultralytics,
    train_model,
)

SMALL_SPLIT_OPTIONS = [f"--{name.replace('_', '-')}={value}" for name, value in SMALL_SPLITS.items()]


def tiny_config(**changes) -> TrainConfig:
    """A short CPU run; every hyperparameter given, as the pipeline gives them."""
    values = {
        "model_size": "n",
        "epochs": 2,
        "image_size": 64,
        "batch_size": 16,
        "patience": 10,
        "optimizer": "AdamW",
        "learning_rate": 0.002,
        "augmentation": {"fliplr": 0.5, "flipud": 0.5, "mosaic": 1.0, "close_mosaic": 0},
        "onnx_opset": 17,
        "workers": 0,
        "device": "cpu",
    }
    return TrainConfig(**{**values, **changes})


def anchors(size: int) -> int:
    return sum((size // stride) ** 2 for stride in (8, 16, 32))


def letterbox(path, size: int) -> np.ndarray:
    """The contract's input: RGB 0..1, aspect kept, padded with 114/255, [1, 3, S, S]."""
    image = Image.open(path).convert("RGB")
    scale = min(size / image.width, size / image.height)
    resized = image.resize((round(image.width * scale), round(image.height * scale)))
    canvas = Image.new("RGB", (size, size), (114, 114, 114))
    canvas.paste(resized, ((size - resized.width) // 2, (size - resized.height) // 2))
    return (np.asarray(canvas, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None]


def test_the_archive_has_the_onnx_model_and_its_manifest_at_the_root(tiny_model, settings):
    manifest, onnx_bytes, names = read_model_archive(tiny_model.archive)
    assert names[:2] == ["model.onnx", "model.json"] and EVALUATION_FILE in names
    with tarfile.open(tiny_model.archive) as archive:
        assert all("/" not in member.name for member in archive.getmembers())
    assert manifest == tiny_model.manifest
    assert manifest.class_names == tuple(settings.project.class_names)
    assert manifest.input_size == 96
    assert (manifest.confidence_threshold, manifest.iou_threshold) == (
        settings.training.confidence_threshold,
        settings.training.iou_threshold,
    )
    assert manifest.onnx_opset == settings.training.onnx_opset
    assert manifest.dataset_version == tiny_model.run.dataset.dataset_version
    assert set(REQUIRED_METRICS) <= set(manifest.metrics)
    assert onnx_bytes == tiny_model.onnx_path.read_bytes()


def test_the_onnx_model_runs_in_onnxruntime_with_the_contracts_shapes(tiny_model):
    manifest, onnx_bytes, _ = read_model_archive(tiny_model.archive)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    assert model_input.name == "images" and model_input.shape == [1, 3, 96, 96]
    assert model_input.type == "tensor(float)"
    for sample in tiny_model.samples[:3]:  # held-out tags the model never saw
        (output,) = session.run(None, {"images": letterbox(sample.path, manifest.input_size)})
        assert output.shape == (1, 4 + len(manifest.class_names), anchors(96))
        assert np.isfinite(output).all()
        scores = output[0, 4:]
        assert ((scores >= 0) & (scores <= 1)).all()  # class scores, no NMS inside
    assert check_onnx_model(tiny_model.onnx_path, image_size=96, num_classes=1) == (1, 5, anchors(96))
    with pytest.raises(TrainingError, match=r"expected output \[1, 7, N\]"):
        check_onnx_model(tiny_model.onnx_path, image_size=96, num_classes=3)


def test_the_archived_onnx_model_has_the_fixed_opset_its_manifest_declares(tiny_model, settings):
    import onnx

    manifest, onnx_bytes, _ = read_model_archive(tiny_model.archive)
    model = onnx.load_from_string(onnx_bytes)
    (default_domain,) = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    assert default_domain == manifest.onnx_opset == settings.training.onnx_opset


def test_the_report_has_every_metric_measured_on_the_held_out_test_split(tiny_model):
    run = tiny_model.run
    report = EvaluationReport.from_json(json.loads(run.evaluation_path.read_text()))
    assert set(report.metrics) == set(REQUIRED_METRICS)
    assert all(0.0 <= value <= 1.0 for value in report.metrics.values())
    # the share of test images with a detection at the deployment threshold (what devices compare against)
    flagged = report.test_statistics["detection_rate"] * report.images
    assert abs(flagged - round(flagged)) < 1e-9
    confidence = report.confidence_threshold
    assert round(flagged) == sum(score >= confidence for score in report.test_statistics["top_scores"])
    raw = json.loads(run.evaluation_path.read_text())
    assert raw["gate_metric"] == {"name": "mAP50-95", "value": report.metrics["mAP50-95"]}
    assert report.split == "test"
    assert report.images == run.prepared.counts["test"]
    assert report.instances == run.prepared.boxes["test"]
    # Training never saw the test split: its dataset file lists only train and val.
    (data_file,) = (run.output / "work" / "checkpoints").glob("run-*/data.yaml")
    training_data = json.loads(data_file.read_text())
    assert "test" not in training_data and {"train", "val"} <= set(training_data)
    assert ModelManifest.from_json(json.loads(json.dumps(run.manifest.to_json()))).metrics == report.metrics


def test_training_logged_metrics_once_per_epoch_and_the_kept_weights_once(tiny_model):
    summary = json.loads((tiny_model.run.output / "work" / "model" / "training.json").read_text())
    epochs = [row["epoch"] for row in summary["history"]]
    assert epochs == [1.0, 2.0]  # the final validation of the kept weights is not one more epoch
    assert {"train_box_loss", "mAP50-95", "precision", "recall"} <= set(summary["history"][0])
    assert {"mAP50", "mAP50-95", "precision", "recall"} == set(summary["best"])
    assert summary["config"]["image_size"] == 96 and summary["onnx_output_shape"] == [1, 5, anchors(96)]
    assert summary["device"] == "cpu"


def test_the_gate_verdict_is_written_with_the_run(tiny_model, settings):
    run = tiny_model.run
    verdict = json.loads(run.gate_path.read_text())
    expected = decide(
        run.evaluation.metrics["mAP50-95"],
        dataset_version=run.dataset.dataset_version,
        threshold=settings.training.map50_95_threshold,
        margin=settings.training.regression_margin,
        champion=None,
    )
    assert verdict == expected.to_json()
    # independently of decide(): no champion, so the run's own metric against the configured threshold
    metric, threshold = run.evaluation.metrics["mAP50-95"], settings.training.map50_95_threshold
    assert (verdict["value"], verdict["threshold"]) == (metric, threshold)
    assert verdict["verdict"] == ("register" if metric >= threshold else "fail")
    assert verdict["champion_package_arn"] is None
    assert json.loads(run.evaluation_path.read_text())["gate"] == verdict


def test_the_evaluation_report_holds_what_it_shows(tiny_model):
    run = tiny_model.run
    page = run.report_path.read_text()
    report = run.evaluation
    assert run.dataset.dataset_version in page
    assert f"{report.metrics['mAP50-95']:.3f}" in page and f"{report.metrics['mAP50']:.3f}" in page
    low, high = report.intervals["mAP50-95"]
    assert f"{low:.3f} to {high:.3f}" in page
    assert {"register": "registered", "fail": "not registered"}[report.verdict] in page
    images = re.findall(r'<img src="([^"]+)"', page)
    assert {"comparison.png", "precision_recall.png", "scores.png", "training.png"} <= set(images)
    for image in images:
        data = (run.report_path.parent / image).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff", image  # PNG figures, JPEG photos
    errors = [i for i in images if i.startswith("errors/")]
    stated = re.search(r"(\d+) missed defect\(s\) and (\d+) false alarm\(s\)", page)
    assert stated and (int(stated[1]) + int(stated[2]) == 0) == (errors == [])
    assert report.test_statistics["images"] == run.prepared.counts["test"]
    assert len(report.test_statistics["top_scores"]) == run.prepared.counts["test"]
    assert run.manifest.test_statistics is not None
    assert run.manifest.test_statistics.detection_rate == report.test_statistics["detection_rate"]


# --------------------------------------------------------------------------------------------------
# More (short) training: resume after an interruption, pretrained weights, the documented command
# --------------------------------------------------------------------------------------------------


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_from_its_checkpoint_and_pretrained_weights_are_used(tiny_model, tmp_path):
    dataset = tiny_model.run.prepared.root
    config = tiny_config(pretrained_weights=tiny_model.run.weights)
    lines: list[str] = []

    def interrupt_after_first_epoch(line: str) -> None:
        lines.append(line)
        if line.startswith(f"{METRICS_PREFIX} epoch=1 "):
            raise Interrupted  # like a spot reclaim right after the epoch's checkpoint was saved

    with pytest.raises(Interrupted):
        train_model(
            dataset, tmp_path / "model", config, checkpoint_dir=tmp_path / "ckpt", log=interrupt_after_first_epoch
        )
    assert any(line.startswith("starting from pretrained weights") for line in lines)
    assert not (tmp_path / "model" / "model.onnx").exists()

    resumed = train_model(dataset, tmp_path / "model", config, checkpoint_dir=tmp_path / "ckpt", log=lines.append)
    assert resumed.resumed_from_epoch == 1
    assert any(line.startswith("resuming the unfinished run") for line in lines)
    assert [h["epoch"] for h in resumed.history] == [2.0]  # only the remaining epoch ran
    assert resumed.output_shape == (1, 5, anchors(64))

    # A finished run is not resumed (nor is one of another configuration): training starts over.
    again = train_model(dataset, tmp_path / "model", config, checkpoint_dir=tmp_path / "ckpt", log=lines.append)
    assert again.resumed_from_epoch is None and [h["epoch"] for h in again.history] == [1.0, 2.0]
    assert sum(line.startswith(BEST_PREFIX) for line in lines) == 2  # once per finished run, after its epochs

    # Another configuration sharing the checkpoint folder (a tuning job's other training job) keeps its own run.
    other = tiny_config(pretrained_weights=tiny_model.run.weights, learning_rate=0.001, epochs=1)
    train_model(dataset, tmp_path / "other", other, checkpoint_dir=tmp_path / "ckpt", log=lines.append)
    assert len(list((tmp_path / "ckpt").glob("run-*/run/weights/last.pt"))) == 2


def test_mixed_precision_is_checked_on_the_model_itself_without_a_download():
    from ultralytics.engine import trainer
    from ultralytics.nn.tasks import DetectionModel

    offline_ultralytics()
    assert trainer.check_amp is mixed_precision_works  # Ultralytics' own check downloads a model
    assert mixed_precision_works(DetectionModel("yolov8n.yaml", nc=1, verbose=False)) is False  # on the CPU


def test_the_documented_command_trains_from_synthetic_data(tmp_path, capsys, monkeypatch):
    # As the README runs it: a relative --output, resolved against the working directory (Ultralytics
    # would put a relative training folder under its own runs directory instead).
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "local-run"
    documented = ["--synthetic", "40", "--epochs", "1", "--image-size", "64", "--batch-size", "16"]
    status = local.main([*documented, "--output", "local-run", *SMALL_SPLIT_OPTIONS])
    assert status == 0
    printed = capsys.readouterr().out
    assert "model archive: local-run/model.tar.gz" in printed
    assert len(list((output / "work" / "checkpoints").glob("run-*/run/weights/best.pt"))) == 1
    assert (output / "work" / "evaluate" / "challenger").is_dir(), "evaluation's work folder is under --output"
    manifest, _, _ = read_model_archive(output / "model.tar.gz")
    assert manifest.input_size == 64
    assert json.loads((output / "manifest.json").read_text())["image_count"] == 40
    assert set(json.loads((output / "evaluation.json").read_text())["metrics"]) == set(REQUIRED_METRICS)
    assert PreparedDataset.load(output / "work" / "yolo").counts["test"] > 0
    assert set(json.loads((output / "gate.json").read_text())) >= {"verdict", "passed", "reason", "threshold"}
    assert (output / "report" / "index.html").is_file()
    synthetic = output / "synthetic"
    required = local.main(
        [
            *("--offline-store", str(synthetic / "offline-store"), "--images", str(synthetic / "images")),
            *("--epochs", "1", "--image-size", "64", "--min-images", "10", "--output", str(tmp_path / "again")),
            *("--require-gate", "--threshold", "1.0", *SMALL_SPLIT_OPTIONS),
        ]
    )
    assert required == 2  # nothing reaches mAP50-95 1.0 in one epoch: the gate fails the command


def test_the_command_explains_bad_input(tmp_path, capsys):
    (tmp_path / "store").mkdir()
    (tmp_path / "images").mkdir()
    store, images = str(tmp_path / "store"), str(tmp_path / "images")
    status = local.main(["--offline-store", store, "--images", images, "--output", str(tmp_path / "out")])
    assert status == 1
    assert "holds no label records" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        local.main(["--output", str(tmp_path / "out")])  # neither --synthetic nor a data source
    assert exited.value.code == 2
    assert "give one data source: --labels FILE, --synthetic N, or both --offline-store and --images" in (
        capsys.readouterr().err
    )


def test_local_tuning_trains_every_trial_and_keeps_the_one_that_validates_best(tiny_model, tmp_path, settings):
    from shared.config import TuningRanges

    ranges = TuningRanges(model_size=["n"], epochs=(1, 2), learning_rate=(0.001, 0.004), image_size=[64, 96])
    points = local.sample_trials(ranges, 3, seed=0)
    assert points == local.sample_trials(ranges, 3, seed=0)  # the same search every time
    assert all(0.001 <= p["learning_rate"] <= 0.004 and p["image_size"] in (64, 96) for p in points)
    options = local.LocalRunOptions.from_settings(settings, device="cpu", workers=0, batch_size=16, **SMALL_SPLITS)
    best_options, best, trials = local.tune(
        tiny_model.run.prepared, options, ranges, 2, work=tmp_path / "tuning", log=lambda _: None
    )
    assert [t.number for t in trials] == [1, 2]
    winner = max(trials, key=lambda t: t.objective)
    assert best.best["mAP50-95"] == winner.objective
    assert (best_options.epochs, best_options.image_size) == (winner.epochs, winner.image_size)
    assert best.onnx_path.parent == tmp_path / "tuning" / f"trial-{winner.number}" / "model"
    assert (
        json.loads((best.onnx_path.parent / "training.json").read_text())["config"]["image_size"] == winner.image_size
    )


def test_a_labels_file_in_the_seed_form_is_a_data_source(tmp_path):
    images = tmp_path / "photos" / "images"
    images.mkdir(parents=True)
    labels = tmp_path / "photos" / "labels.jsonl"
    rows = [
        {
            "image": "images/a.jpg",
            "width": 64,
            "height": 48,
            "boxes": [{"class_id": 0, "x1": 1, "y1": 2, "x2": 30, "y2": 40}],
        },
        {"image": "images/b.jpg", "width": 64, "height": 48, "boxes": []},
    ]
    labels.write_text("".join(json.dumps(row) + "\n" for row in rows))
    records = local.labels_file_records(labels, ["scratch"])
    assert [r.image_uri for r in records] == ["s3://local-labels/images/a.jpg", "s3://local-labels/images/b.jpg"]
    assert records[0].annotations[0].x2 == 30 and records[1].annotations == ()
    store, folder = local.labels_file_source(labels, tmp_path / "out", ["scratch"])
    assert folder == labels.parent and list(store.rglob("*.parquet"))

    labels.write_text(labels.read_text() + '{"image": "images/c.jpg", "width": 64}\n')
    with pytest.raises(local.DatasetError, match=r"1 malformed row\(s\): line 3: image_height is required"):
        local.labels_file_records(labels, ["scratch"])


def test_a_local_run_compares_with_a_given_champion(tiny_model, tmp_path, capsys):
    source = tiny_model.run.output.parent / "source"  # the champion's own labels
    arguments = ["--offline-store", str(source / "offline-store"), "--images", str(source / "images")]
    arguments += ["--epochs", "1", "--image-size", "64", "--output", str(tmp_path / "run"), *SMALL_SPLIT_OPTIONS]
    assert local.main([*arguments, "--champion", str(tiny_model.archive), "--min-images", "20"]) == 0
    report = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert report["champion"]["package"] == str(tiny_model.archive)
    assert report["comparison"]["images"] == tiny_model.run.prepared.counts["test"]  # none excluded: same split
    # the champion's dataset: only a model better beyond doubt would be registered
    low = report["comparison"]["intervals"]["mAP50-95"][0]
    assert report["gate"]["verdict"] == ("register" if low > 0 else "no_change")
    missing = local.main([*arguments, "--champion", str(tmp_path / "nope.tar.gz")])
    assert missing == 1 and "the approved model " in capsys.readouterr().err
