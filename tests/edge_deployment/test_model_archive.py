"""The model archive check and its repackaging into the model component's model.zip."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from edge_deployment.runtime.model_archive import (
    InvalidModelArchive,
    ModelArchiveTooLarge,
    repackage_model_archive,
)
from tests.edge_deployment.conftest import CLASS_NAMES, manifest, model_archive, onnx_bytes, tar_gz

MB = 1024 * 1024


def _repackage(tmp_path: Path, data: bytes, **kwargs):
    tmp_path.mkdir(parents=True, exist_ok=True)
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(data)
    kwargs.setdefault("max_archive_bytes", 10 * MB)
    kwargs.setdefault("expected_class_names", CLASS_NAMES)
    return repackage_model_archive(archive, tmp_path / "out" / "model.zip", **kwargs)


def test_a_valid_archive_becomes_a_zip_with_exactly_the_model_and_manifest_at_its_root(tmp_path):
    result = _repackage(tmp_path, model_archive())
    with zipfile.ZipFile(result.zip_path) as zipped:
        assert sorted(zipped.namelist()) == ["model.json", "model.onnx"]
        assert zipped.read("model.onnx") == onnx_bytes()
        assert json.loads(zipped.read("model.json")) == manifest()
    assert result.manifest.class_names == tuple(CLASS_NAMES)
    assert result.manifest.input_size == 320
    assert result.onnx_bytes == len(onnx_bytes())
    assert len(result.sha256) == 64


def test_the_model_in_the_zip_still_loads_in_onnxruntime(tmp_path):
    import numpy as np
    import onnxruntime as ort

    result = _repackage(tmp_path, model_archive())
    with zipfile.ZipFile(result.zip_path) as zipped:
        session = ort.InferenceSession(zipped.read("model.onnx"), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {"images": np.zeros((1, 3, 32, 32), dtype=np.float32)})
    assert output.shape == (1, 5, 1024)


def test_repackaging_the_same_archive_twice_gives_the_same_bytes(tmp_path):
    first = _repackage(tmp_path / "a", model_archive())
    second = _repackage(tmp_path / "b", model_archive())
    assert first.sha256 == second.sha256
    assert first.zip_path.read_bytes() == second.zip_path.read_bytes()


def test_files_written_as_dot_slash_paths_count_as_root_files(tmp_path):
    data = tar_gz({"./model.onnx": onnx_bytes(), "./model.json": json.dumps(manifest()).encode()})
    assert sorted(zipfile.ZipFile(_repackage(tmp_path, data).zip_path).namelist()) == ["model.json", "model.onnx"]


INT8_ENTRY = {"file": "model.int8.onnx", "metrics": {"precision": 0.9, "recall": 0.87, "mAP50": 0.897, "mAP50-95": 0.6}}


def _with_int8(**overrides: bytes | None) -> bytes:
    """A valid archive that also carries an INT8 model listed in model.json."""
    document = manifest(precisions={"int8": INT8_ENTRY})
    files = {"model_json": json.dumps(document).encode(), "model.int8.onnx": onnx_bytes() + b"\x12\x00"}
    return model_archive(**{**files, **overrides})


def test_an_archive_with_an_int8_model_carries_it_into_the_zip(tmp_path):
    result = _repackage(tmp_path, _with_int8())
    with zipfile.ZipFile(result.zip_path) as zipped:
        assert zipped.namelist() == ["model.onnx", "model.json", "model.int8.onnx"]
        assert zipped.read("model.int8.onnx") == onnx_bytes() + b"\x12\x00"
        assert json.loads(zipped.read("model.json"))["precisions"] == {"int8": INT8_ENTRY}
    assert result.manifest.model_files == ("model.onnx", "model.int8.onnx")
    assert result.manifest.variant("int8").metrics["mAP50"] == 0.897


def test_onnx_files_that_model_json_does_not_list_are_left_out(tmp_path):
    result = _repackage(tmp_path, model_archive(**{"model.int8.onnx": onnx_bytes()}))
    assert zipfile.ZipFile(result.zip_path).namelist() == ["model.onnx", "model.json"]


@pytest.mark.parametrize(
    ("archive", "message"),
    [
        (lambda: _with_int8(**{"model.int8.onnx": None}), r"lists model\.int8\.onnx \(precisions\.int8\) but"),
        (lambda: _with_int8(**{"model.int8.onnx": b"not onnx"}), r"model\.int8\.onnx is not an ONNX model"),
        (lambda: _with_int8(**{"model.int8.onnx": b""}), r"model\.int8\.onnx is empty"),
        (
            lambda: model_archive(
                model_json=json.dumps(manifest(precisions={"int8": {**INT8_ENTRY, "metrics": {}}})).encode(),
                **{"model.int8.onnx": onnx_bytes()},
            ),
            r"precisions\.int8: metrics lack precision, recall, mAP50, mAP50-95",
        ),
    ],
    ids=["int8-missing", "int8-not-onnx", "int8-empty", "int8-without-metrics"],
)
def test_bad_int8_entries_fail_with_a_reason_and_write_no_zip(tmp_path, archive, message):
    with pytest.raises(InvalidModelArchive, match=message) as raised:
        _repackage(tmp_path, archive())
    assert "nothing was created" in str(raised.value)
    assert not (tmp_path / "out" / "model.zip").exists()


def test_the_model_files_together_must_stay_under_the_expansion_limit(tmp_path):
    half = b"\x08" + bytes(3 * MB)  # each alone is under the 4 x 1 MiB limit, both together are not
    data = _with_int8(model_onnx=half, **{"model.int8.onnx": half})
    with pytest.raises(ModelArchiveTooLarge, match=r"the model files are 6\.0 MiB uncompressed, over 4 MiB"):
        _repackage(tmp_path, data, max_archive_bytes=1 * MB)


@pytest.mark.parametrize(
    ("archive", "message"),
    [
        (lambda: model_archive(model_onnx=None), r"has no model\.onnx at its root"),
        (lambda: model_archive(model_json=None), r"has no model\.json at its root"),
        (
            lambda: tar_gz({"model/model.onnx": onnx_bytes(), "model/model.json": json.dumps(manifest()).encode()}),
            r"has no model\.onnx and no model\.json at its root",
        ),
        (lambda: model_archive(model_json=b"{not json"), r"model\.json is not JSON"),
        (lambda: model_archive(model_json=json.dumps([1, 2]).encode()), r"must hold a JSON object"),
        (lambda: model_archive(model_json=json.dumps(manifest(metrics={})).encode()), r"metrics lack precision"),
        (lambda: model_archive(model_json=json.dumps(manifest(input_size=300)).encode()), r"multiple of 32"),
        (
            lambda: model_archive(model_json=json.dumps(manifest(class_names=["dent"])).encode()),
            r"class_names \['dent'\] differ from the configured project\.class_names \['scratch'\]",
        ),
        (lambda: model_archive(model_onnx=b"not a model at all"), r"model\.onnx is not an ONNX model"),
        (lambda: model_archive(model_onnx=b""), r"model\.onnx is empty"),
        (
            lambda: tar_gz({"model.json": json.dumps(manifest()).encode()}, symlinks={"model.onnx": "/etc/passwd"}),
            r"model\.onnx is not a regular file",
        ),
        (
            lambda: tar_gz({"model.onnx": onnx_bytes(), "./model.onnx": onnx_bytes(), "model.json": b"{}"}),
            r"model\.onnx appears twice",
        ),
        (lambda: b"PK\x03\x04 a zip, not a tar", r"not a readable gzip tar"),
        (lambda: model_archive()[:200], r"not a readable gzip tar"),
    ],
    ids=[
        "no-onnx",
        "no-manifest",
        "files-in-a-folder",
        "manifest-not-json",
        "manifest-not-object",
        "manifest-without-metrics",
        "manifest-bad-input-size",
        "other-classes",
        "onnx-not-onnx",
        "onnx-empty",
        "onnx-symlink",
        "duplicate",
        "not-gzip",
        "truncated",
    ],
)
def test_bad_archives_fail_with_a_reason_and_write_no_zip(tmp_path, archive, message):
    with pytest.raises(InvalidModelArchive, match=message) as raised:
        _repackage(tmp_path, archive())
    assert "nothing was created" in str(raised.value)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_an_archive_over_the_limit_is_refused_before_it_is_opened(tmp_path):
    data = model_archive()
    with pytest.raises(
        ModelArchiveTooLarge, match=r"over the limit of 0 MiB \(edge_deployment\.max_model_archive_mb\)"
    ):
        _repackage(tmp_path, data, max_archive_bytes=len(data) - 1)
    assert not (tmp_path / "out").exists()


def test_an_archive_exactly_at_the_limit_is_accepted(tmp_path):
    data = model_archive()
    assert _repackage(tmp_path, data, max_archive_bytes=len(data)).zip_bytes > 0


def test_a_model_that_expands_far_beyond_the_limit_is_refused(tmp_path):
    # 4 MiB of zeros compress to a few KiB: the archive is small, the model is not.
    huge = b"\x08" + bytes(4 * MB)
    data = model_archive(model_onnx=huge)
    assert len(data) < 64 * 1024
    with pytest.raises(ModelArchiveTooLarge, match=r"uncompressed"):
        _repackage(tmp_path, data, max_archive_bytes=512 * 1024)


@pytest.mark.slow
def test_the_archive_the_training_code_writes_is_accepted_and_repackaged(tmp_path, tiny_model, settings):
    """The training -> edge contract with a real archive (a tiny model the training code trains offline)."""
    result = repackage_model_archive(
        tiny_model.archive,
        tmp_path / "model.zip",
        max_archive_bytes=settings.edge_deployment.max_model_archive_mb * MB,
        expected_class_names=settings.project.class_names,
    )
    with zipfile.ZipFile(result.zip_path) as zipped:
        assert sorted(zipped.namelist()) == ["model.json", "model.onnx"]
        assert zipped.read("model.onnx") == tiny_model.onnx_path.read_bytes()
    assert result.manifest == tiny_model.manifest
