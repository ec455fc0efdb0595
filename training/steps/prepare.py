"""Step 2, split and convert: recreate a dataset version from its manifest in the YOLO layout.

* The split of an image depends on a hash of its URI: a position in [0, 1). Images below the test
  threshold are `test`, the next ones `val`, the rest `train`. The thresholds are the configured
  fractions, raised on a small dataset just enough that the test and validation splits reach their
  minimum sizes (a test split of a dozen images cannot tell a good model from a bad one). As images
  are added, the test threshold can only go down: an image may leave the test split, but an image an
  earlier model was trained on never enters it (unless the fractions or minimums change).
* Too few images, or too few labeled defects in the test split, to judge a model: the step fails
  and says how many more labeled images are needed.
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


@dataclass(frozen=True)
class SplitPlan:
    """How a dataset is split: fractions, and the minimum sizes that make the test split worth reading."""

    validation_fraction: float
    test_fraction: float
    min_validation_images: int
    min_test_images: int
    min_test_defects: int  # labeled boxes in the test split

    def __post_init__(self) -> None:
        if not (0 < self.validation_fraction < 1 and 0 < self.test_fraction < 1):
            raise ValueError("validation and test fractions must be in (0, 1)")
        if self.validation_fraction + self.test_fraction >= 0.5:
            raise ValueError("validation and test fractions must leave at least half of the images for training")
        if min(self.min_validation_images, self.min_test_images, self.min_test_defects) < 1:
            raise ValueError("the minimum split sizes must be at least 1")

    @property
    def images_needed(self) -> int:
        """The fewest labeled images that give both minimum splits and keep half of them for training."""
        return 2 * (self.min_test_images + self.min_validation_images)


def split_position(image_uri: str) -> float:
    """A position in [0, 1) from a hash of the image URI alone (stable across dataset versions)."""
    return int.from_bytes(hashlib.sha256(image_uri.encode()).digest()[:8], "big") / 2**64


def assign_splits(image_uris: Sequence[str], plan: SplitPlan) -> dict[str, str]:
    """`train`, `val` or `test` for each image (see the module's docstring); too few images fail."""
    total = len(set(image_uris))
    if total < plan.images_needed:
        raise DatasetError(
            f"{total} labeled images are too few to train and judge a model: the test split needs at least "
            f"{plan.min_test_images} images and the validation split {plan.min_validation_images}, with as many "
            f"again to train on; label at least {plan.images_needed - total} more ({plan.images_needed} in all)"
        )
    ordered = sorted(set(image_uris), key=split_position)
    positions = [split_position(uri) for uri in ordered]
    # Thresholds: the fraction, or just past the n-th smallest position when that reaches further.
    test_end = max(plan.test_fraction, positions[plan.min_test_images - 1] + 1e-12)
    tested = sum(1 for p in positions if p < test_end)
    val_end = max(test_end + plan.validation_fraction, positions[tested + plan.min_validation_images - 1] + 1e-12)
    return {
        uri: "test" if position < test_end else "val" if position < val_end else "train"
        for uri, position in zip(ordered, positions, strict=True)
    }


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
    plan: SplitPlan,
    workers: int = 8,
) -> PreparedDataset:
    """Write `images/<split>/`, `labels/<split>/`, `data.yaml` and `dataset.json` under `output_dir`."""
    splits = assign_splits([entry.image_uri for entry in manifest.images], plan)
    boxes = {
        split: sum(len(e.annotations) for e in manifest.images if splits[e.image_uri] == split) for split in SPLITS
    }
    counts = {split: sum(1 for s in splits.values() if s == split) for split in SPLITS}
    if boxes["test"] < plan.min_test_defects:
        raise DatasetError(
            f"the test split ({counts['test']} images) holds {boxes['test']} labeled defect(s), fewer than the "
            f"{plan.min_test_defects} needed to measure precision, recall and mAP; label more images with defects"
        )
    root = Path(output_dir)
    for sub in ("images", "labels"):
        shutil.rmtree(root / sub, ignore_errors=True)  # a retried step starts from a clean folder
    for split in SPLITS:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(lambda e: _restore(e, store, root, splits[e.image_uri]), manifest.images))
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
