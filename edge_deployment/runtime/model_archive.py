"""Step 2a: check a model archive (model.tar.gz) and repackage it as the model component's model.zip.

The archive must be a gzip tar with `model.onnx` and a valid `model.json` (shared.contracts.
ModelManifest) at its root and be no larger than the configured limit; every other precision
model.json lists (`precisions`, e.g. `model.int8.onnx`) must be there too. The ZIP holds exactly those
files at its root (shared/contracts.py; the device finds them under `.../model/`), written with fixed
timestamps so the same archive always gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_deployment.runtime.aws import DeploymentInputError
from shared.contracts import MANIFEST_FILE, MODEL_FILE, ContractError, ModelManifest

MODEL_ZIP = "model.zip"
MAX_MANIFEST_BYTES = 1024 * 1024
# A gzip tar can expand a lot: the ONNX model may be at most this many times the archive limit.
MAX_EXPANSION = 4
_ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)
_ONNX_FIRST_BYTE = 0x08  # protobuf tag of ModelProto.ir_version (field 1, varint), written first


class InvalidModelArchive(DeploymentInputError):
    """The archive is not a gzip tar with model.onnx and a valid model.json at its root."""


class ModelArchiveTooLarge(DeploymentInputError):
    """The archive is over `edge_deployment.max_model_archive_mb`."""


@dataclass(frozen=True)
class RepackagedModel:
    manifest: ModelManifest
    zip_path: Path
    sha256: str
    zip_bytes: int
    onnx_bytes: int


def check_archive_size(size_bytes: int, *, max_bytes: int, source: str) -> None:
    if size_bytes > max_bytes:
        raise ModelArchiveTooLarge(
            f"model archive {source} is {size_bytes / 2**20:.1f} MiB, over the limit of "
            f"{max_bytes / 2**20:.0f} MiB (edge_deployment.max_model_archive_mb); nothing was created"
        )
    if size_bytes == 0:
        raise InvalidModelArchive(f"model archive {source} is empty; nothing was created")


def _root_name(name: str) -> str | None:
    """`model.onnx` for `model.onnx` or `./model.onnx`; None for anything inside a folder."""
    while name.startswith("./"):
        name = name[2:]
    return name if name and "/" not in name.rstrip("/") else None


def repackage_model_archive(
    archive: Path,
    destination: Path,
    *,
    max_archive_bytes: int,
    expected_class_names: Sequence[str] | None = None,
    source: str | None = None,
) -> RepackagedModel:
    """Validate `archive` (model.tar.gz) and write `destination` (model.zip). Raises before writing on bad input."""
    source = source or str(archive)
    check_archive_size(archive.stat().st_size, max_bytes=max_archive_bytes, source=source)
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            members = _model_members(tar, source)
            missing = [name for name in (MODEL_FILE, MANIFEST_FILE) if name not in members]
            if missing:
                raise InvalidModelArchive(
                    f"model archive {source} has no {' and no '.join(missing)} at its root "
                    f"(found: {', '.join(sorted(m.name for m in tar.getmembers())[:10]) or 'nothing'}); "
                    "nothing was created"
                )
            manifest = _read_manifest(tar, members[MANIFEST_FILE], source)
            if expected_class_names is not None and list(manifest.class_names) != list(expected_class_names):
                raise InvalidModelArchive(
                    f"model archive {source}: model.json class_names {list(manifest.class_names)} differ from "
                    f"the configured project.class_names {list(expected_class_names)}; nothing was created"
                )
            for variant in manifest.variants:
                if variant.file not in members:
                    raise InvalidModelArchive(
                        f"model archive {source}: model.json lists {variant.file} (precisions.{variant.precision}) "
                        "but the archive has no such file at its root; nothing was created"
                    )
            onnx = members[MODEL_FILE]
            total = sum(members[name].size for name in manifest.model_files)
            for name in manifest.model_files:
                _check_onnx(tar, members[name], source, total=total, max_bytes=max_archive_bytes * MAX_EXPANSION)
            destination.parent.mkdir(parents=True, exist_ok=True)
            # Written beside the destination and renamed when complete: never a half-written model.zip.
            partial = destination.with_name(destination.name + ".partial")
            with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as out:
                for name in (MODEL_FILE, MANIFEST_FILE, *manifest.model_files[1:]):
                    info = zipfile.ZipInfo(name, date_time=_ZIP_TIMESTAMP)
                    info.compress_type = zipfile.ZIP_DEFLATED
                    info.external_attr = 0o644 << 16
                    reader = tar.extractfile(members[name])
                    if reader is None:  # pragma: no cover - isfile() members always have data
                        raise InvalidModelArchive(f"model archive {source}: cannot read {name}")
                    with reader, out.open(info, "w", force_zip64=True) as writer:
                        shutil.copyfileobj(reader, writer, length=1024 * 1024)
            partial.replace(destination)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        destination.with_name(destination.name + ".partial").unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno:
            raise  # a real I/O problem (disk full), not bad input
        raise InvalidModelArchive(
            f"model archive {source} is not a readable gzip tar ({error}); nothing was created"
        ) from None
    digest = hashlib.sha256()
    with destination.open("rb") as written:
        for block in iter(lambda: written.read(1024 * 1024), b""):
            digest.update(block)
    return RepackagedModel(
        manifest=manifest,
        zip_path=destination,
        sha256=digest.hexdigest(),
        zip_bytes=destination.stat().st_size,
        onnx_bytes=onnx.size,
    )


def _model_members(tar: tarfile.TarFile, source: str) -> dict[str, tarfile.TarInfo]:
    """model.json and the .onnx files at the archive's root, each a regular file and there once."""
    members: dict[str, tarfile.TarInfo] = {}
    for member in tar.getmembers():
        name = _root_name(member.name)
        if name is None or (name != MANIFEST_FILE and not name.endswith(".onnx")):
            continue  # extra files are allowed and left out
        if name in members:
            raise InvalidModelArchive(f"model archive {source}: {name} appears twice; nothing was created")
        if not member.isfile():
            raise InvalidModelArchive(
                f"model archive {source}: {name} is not a regular file (link or folder); nothing was created"
            )
        members[name] = member
    return members


def _read_manifest(tar: tarfile.TarFile, member: tarfile.TarInfo, source: str) -> ModelManifest:
    if member.size > MAX_MANIFEST_BYTES:
        raise InvalidModelArchive(f"model archive {source}: model.json is {member.size} bytes; nothing was created")
    reader = tar.extractfile(member)
    raw = reader.read() if reader else b""
    try:
        document = json.loads(raw.decode("utf-8"))
        if not isinstance(document, dict):
            raise ContractError("model.json must hold a JSON object")
        return ModelManifest.from_json(document)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidModelArchive(
            f"model archive {source}: model.json is not JSON ({error}); nothing was created"
        ) from None
    except ContractError as error:
        raise InvalidModelArchive(f"model archive {source}: {error}; nothing was created") from None


def _check_onnx(tar: tarfile.TarFile, member: tarfile.TarInfo, source: str, *, total: int, max_bytes: int) -> None:
    """One model file of the archive; `total` is the size of all of them, which must stay under `max_bytes`."""
    name = _root_name(member.name)
    if member.size == 0:
        raise InvalidModelArchive(f"model archive {source}: {name} is empty; nothing was created")
    if total > max_bytes:
        models = "model.onnx" if name == MODEL_FILE and total == member.size else "the model files"
        raise ModelArchiveTooLarge(
            f"model archive {source}: {models} {'is' if models == 'model.onnx' else 'are'} {total / 2**20:.1f} MiB "
            f"uncompressed, over {max_bytes / 2**20:.0f} MiB; nothing was created"
        )
    reader = tar.extractfile(member)
    first = reader.read(1) if reader else b""
    if not first or first[0] != _ONNX_FIRST_BYTE:
        raise InvalidModelArchive(
            f"model archive {source}: {name} is not an ONNX model (no ModelProto header); nothing was created"
        )
