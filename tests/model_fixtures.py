"""The cross-app ML fixture: a tiny YOLOv8 model trained once per test session by the project's own
training code (`training.local.run_local`), fully offline, on synthetic tags with drawn scratches.

Registered as a pytest plugin by tests/conftest.py. Apps that need a real model archive (device
parity, end-to-end) use `tiny_model`; nothing here is specific to the training app's own tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.contracts import ModelManifest
from shared.synthetic import Sample, write_dataset

# A few dozen synthetic tags cannot fill the configured minimum splits (30 test images, ...): the
# mechanics are tested with small ones. The configured minimums are tested in tests/training.
SMALL_SPLITS = {"min_validation_images": 6, "min_test_images": 8, "min_test_defects": 4}

TINY_IMAGE_SIZE = 96
TINY_EPOCHS = 2
TINY_TRAINING_IMAGES = 64
TINY_HELD_OUT_IMAGES = 8


@dataclass(frozen=True)
class TinyModel:
    archive: Path  # model.tar.gz: model.onnx + model.json at the root (shared/contracts.py)
    onnx_path: Path  # the same ONNX model, unpacked
    manifest: ModelManifest  # model.json as read back from the archive
    images_dir: Path  # held-out synthetic images (never trained on) + labels.jsonl
    samples: list[Sample]  # their exact boxes
    run: object  # training.local.LocalRunResult: the reports and folders of the run

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.manifest.class_names

    @property
    def input_size(self) -> int:
        return self.manifest.input_size


# A model that has learned to find scratches (mAP50 about 0.3 on its test split, scores up to about
# 0.45 on held-out tags): about a minute and a half on two cores. For checks that need real detections
# at the thresholds a device uses, not the near-zero scores of the tiny model.
TRAINED_IMAGE_SIZE = 160
TRAINED_EPOCHS = 40
TRAINED_TRAINING_IMAGES = 96


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Train, export, evaluate and package a tiny model (about half a minute on two cores), once."""
    return _train(tmp_path_factory.mktemp("tiny-model"), TINY_TRAINING_IMAGES, TINY_EPOCHS, TINY_IMAGE_SIZE, int8=False)


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """The same pipeline trained long enough to detect scratches with real confidence, once."""
    return _train(tmp_path_factory.mktemp("trained-model"), TRAINED_TRAINING_IMAGES, TRAINED_EPOCHS, TRAINED_IMAGE_SIZE)


@pytest.fixture(scope="session")
def int8_trained_model(trained_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`trained_model` quantized to INT8 by the training code (training.steps.quantize) on its training images."""
    from training.steps.quantize import quantize_model

    output = tmp_path_factory.mktemp("int8-trained-model") / "model.int8.onnx"
    training_images = trained_model.run.prepared.root / "images" / "train"  # type: ignore[attr-defined]
    return quantize_model(trained_model.onnx_path, training_images, output, max_images=32).output


def _train(root: Path, images: int, epochs: int, image_size: int, *, int8: bool = True) -> TinyModel:
    """`int8=False`: an FP32-only archive (the tiny model, also the shape of archives made before INT8)."""
    from shared.config import DEFAULT_CONFIG_FILE, load_settings
    from training.local import LocalRunOptions, run_local, write_synthetic_source

    settings = load_settings(DEFAULT_CONFIG_FILE)
    source = write_synthetic_source(root / "source", images, num_classes=len(settings.project.class_names), seed=7)
    options = LocalRunOptions.from_settings(
        settings,
        epochs=epochs,
        image_size=image_size,
        batch_size=16,
        min_images=20,
        **SMALL_SPLITS,
        quantize_int8=int8,
        device="cpu",
        workers=0,
    )
    result = run_local(
        offline_store=source.offline_store,
        images=source.images,
        output=root / "run",
        options=options,
        log=lambda _: None,
    )
    held_out = write_dataset(
        root / "held-out", TINY_HELD_OUT_IMAGES, seed=4242, num_classes=len(settings.project.class_names)
    )
    return TinyModel(
        archive=result.archive,
        onnx_path=result.onnx_path,
        manifest=result.manifest,
        images_dir=root / "held-out",
        samples=held_out,
        run=result,
    )
