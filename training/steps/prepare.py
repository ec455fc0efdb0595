"""Step 2, split and convert: recreate a dataset version from its manifest in the YOLO layout.

* The split of an image depends only on its URI (a hash), so an image keeps its split when images
  are added or removed: the test split of a later version never holds an image that an earlier model
  was trained on (unless the fractions change).
* Every image is fetched again by URI (and S3 version when known) and must still have the content
  hash the manifest recorded: the dataset is recreated exactly, or not at all.
* Any image type Pillow reads works: JPEG, PNG, BMP, WebP and TIFF are copied as they are, anything
  else is re-encoded as PNG. Boxes become YOLO label lines (class, centre and size, normalized).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from shared.contracts import Annotation
from training.steps.dataset import (
    DatasetError,
    DatasetManifest,
    ImageNotFound,
    ImageStore,
    ManifestEntry,
    inspect_image,
    parse_s3_uri,
)

SPLITS = ("train", "val", "test")
DATA_FILE = "data.yaml"
PREPARED_FILE = "dataset.json"
# Pillow format -> extension Ultralytics reads as is.
_KEPT_FORMATS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "BMP": ".bmp", "WEBP": ".webp", "TIFF": ".tif"}


def assign_split(image_uri: str, *, validation_fraction: float, test_fraction: float) -> str:
    """`train`, `val` or `test` for an image, from a hash of its URI alone (stable across versions)."""
    if not (0 < validation_fraction < 1 and 0 < test_fraction < 1 and validation_fraction + test_fraction < 1):
        raise ValueError("validation and test fractions must be in (0, 1) and leave room for training")
    position = int.from_bytes(hashlib.sha256(image_uri.encode()).digest()[:8], "big") / 2**64
    if position < test_fraction:
        return "test"
    if position < test_fraction + validation_fraction:
        return "val"
    return "train"


def yolo_label_lines(annotations: Sequence[Annotation], width: int, height: int) -> list[str]:
    """One `class cx cy w h` line per box, normalized to the image size (6 decimals: < 0.01 px at 8k)."""
    lines = []
    for box in annotations:
        cx, cy = (box.x1 + box.x2) / 2 / width, (box.y1 + box.y2) / 2 / height
        bw, bh = (box.x2 - box.x1) / width, (box.y2 - box.y1) / height
        lines.append(f"{box.class_id} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
    return lines


def boxes_from_label_lines(
    lines: Sequence[str], width: int, height: int
) -> list[tuple[int, float, float, float, float]]:
    """The inverse of `yolo_label_lines`: (class, x1, y1, x2, y2) in pixels."""
    boxes = []
    for line in lines:
        if not line.strip():
            continue
        class_id, cx, cy, bw, bh = line.split()
        x, y, w, h = float(cx) * width, float(cy) * height, float(bw) * width, float(bh) * height
        boxes.append((int(class_id), x - w / 2, y - h / 2, x + w / 2, y + h / 2))
    return boxes


def file_stem(image_uri: str) -> str:
    """A file name unique per URI (two devices may both upload `frame-0001.jpg`)."""
    _, key = parse_s3_uri(image_uri)
    stem = PurePosixPath(key).stem or "image"
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem)[:80]
    return f"{safe}-{hashlib.sha256(image_uri.encode()).hexdigest()[:10]}"


def write_data_yaml(
    root: str | Path,
    class_names: Sequence[str],
    *,
    splits: Sequence[str] = SPLITS,
    destination: str | Path | None = None,
) -> Path:
    """The Ultralytics dataset file for a prepared folder (JSON is valid YAML; the path is absolute).

    `destination` puts the file elsewhere (an input channel may be read-only); default: `root/data.yaml`.
    """
    root = Path(root).resolve()
    document: dict[str, object] = {"path": str(root), **{split: f"images/{split}" for split in splits}}
    document["names"] = dict(enumerate(class_names))
    path = Path(destination) if destination else root / DATA_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1), encoding="utf-8")
    return path


@dataclass(frozen=True)
class PreparedDataset:
    root: Path
    dataset_version: str
    class_names: tuple[str, ...]
    counts: Mapping[str, int]  # images per split
    boxes: Mapping[str, int]  # boxes per split
    splits: Mapping[str, str]  # image URI -> split

    @property
    def data_yaml(self) -> Path:
        return self.root / DATA_FILE

    def to_json(self) -> dict[str, object]:
        return {
            "dataset_version": self.dataset_version,
            "class_names": list(self.class_names),
            "counts": dict(self.counts),
            "boxes": dict(self.boxes),
            "splits": dict(self.splits),
        }

    @classmethod
    def load(cls, root: str | Path) -> PreparedDataset:
        root = Path(root)
        try:
            raw = json.loads((root / PREPARED_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise DatasetError(f"{root} is not a prepared dataset ({PREPARED_FILE}: {error})") from None
        return cls(
            root=root,
            dataset_version=str(raw["dataset_version"]),
            class_names=tuple(raw["class_names"]),
            counts=dict(raw["counts"]),
            boxes=dict(raw["boxes"]),
            splits=dict(raw["splits"]),
        )


def _restore(entry: ManifestEntry, store: ImageStore, root: Path, split: str) -> None:
    try:
        blob = store.fetch(entry.image_uri, entry.version_id)
    except ImageNotFound as error:
        raise DatasetError(f"cannot recreate the dataset: {error}") from None
    digest = hashlib.sha256(blob.data).hexdigest()
    if digest != entry.sha256:
        raise DatasetError(
            f"cannot recreate the dataset: {entry.image_uri} has content {digest[:12]}..., "
            f"the manifest recorded {entry.sha256[:12]}..."
        )
    info = inspect_image(blob.data)
    stem = file_stem(entry.image_uri)
    extension = _KEPT_FORMATS.get(info.format.upper())
    image_dir, label_dir = root / "images" / split, root / "labels" / split
    if extension:
        (image_dir / f"{stem}{extension}").write_bytes(blob.data)
    else:
        from PIL import Image  # noqa: PLC0415

        with Image.open(io.BytesIO(blob.data)) as image:
            image.save(image_dir / f"{stem}.png")
    lines = yolo_label_lines(entry.annotations, entry.width, entry.height)
    (label_dir / f"{stem}.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def prepare_dataset(
    manifest: DatasetManifest,
    store: ImageStore,
    output_dir: str | Path,
    *,
    validation_fraction: float,
    test_fraction: float,
    workers: int = 8,
) -> PreparedDataset:
    """Write `images/<split>/`, `labels/<split>/`, `data.yaml` and `dataset.json` under `output_dir`."""
    root = Path(output_dir)
    for sub in ("images", "labels"):
        shutil.rmtree(root / sub, ignore_errors=True)  # a retried step starts from a clean folder
    for split in SPLITS:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    splits = {
        entry.image_uri: assign_split(
            entry.image_uri, validation_fraction=validation_fraction, test_fraction=test_fraction
        )
        for entry in manifest.images
    }
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(lambda e: _restore(e, store, root, splits[e.image_uri]), manifest.images))
    counts = {split: sum(1 for s in splits.values() if s == split) for split in SPLITS}
    boxes = {
        split: sum(len(e.annotations) for e in manifest.images if splits[e.image_uri] == split) for split in SPLITS
    }
    empty = [split for split in SPLITS if counts[split] == 0]
    if empty:
        raise DatasetError(
            f"the {' and '.join(empty)} split(s) of {len(manifest.images)} images are empty "
            f"(fractions: validation {validation_fraction}, test {test_fraction}); label more images"
        )
    if boxes["test"] == 0:
        raise DatasetError(
            f"the test split ({counts['test']} images) has no labeled defect, so precision, recall and mAP "
            "cannot be measured; label more images with defects"
        )
    prepared = PreparedDataset(
        root=root,
        dataset_version=manifest.dataset_version,
        class_names=manifest.class_names,
        counts=counts,
        boxes=boxes,
        splits=splits,
    )
    (root / PREPARED_FILE).write_text(json.dumps(prepared.to_json(), indent=1), encoding="utf-8")
    write_data_yaml(root, manifest.class_names)
    return prepared
