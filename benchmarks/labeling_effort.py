"""How many boxes people draw or change per round, with and without model-assisted pre-labels.

    .venv/bin/python benchmarks/labeling_effort.py --model MODEL.tar.gz [--photos DIR]

The photos are the reference tags (`datasets/reference-tags`: 188 real photos, human boxes in
labels.jsonl). Pre-labels are the model's boxes computed exactly as the pre-label function computes
them: the device's detector on the model archive, at model.json's thresholds. A simulated labeler
(`labeling/local/effort.py`) turns the offered boxes into the human ones and counts what it did.
Without pre-labels every human box is drawn.

The figures are split by the model's own training split (the archive's `dataset.json`, which the
training pipeline writes): photos the model trained on flatter it, so the held-out ones (validation +
test) are the honest estimate of a round of new images. An archive without it gives the total only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from edge_deployment.components.inference.inspector.detector import load_detector  # noqa: E402
from labeling.local.effort import Effort, correct  # noqa: E402
from labeling.runtime.pre_labels import extract_model_archive  # noqa: E402
from shared.contracts import Annotation  # noqa: E402

DEFAULT_PHOTOS = REPO_ROOT / "datasets" / "reference-tags"


def training_split(model: Path) -> dict[str, str] | None:
    """File name -> the split the model was trained with (its archive's dataset.json), if the archive says."""
    with tarfile.open(model, "r:gz") as archive:
        if "dataset.json" not in archive.getnames():
            return None
        member = archive.extractfile("dataset.json")
        splits = json.loads(member.read())["splits"] if member is not None else {}
    return {PurePosixPath(uri).name: split for uri, split in splits.items()}


def measure(photos: Path, model: Path) -> dict[str, dict[str, int]]:
    detector = load_detector(extract_model_archive(model, Path(tempfile.mkdtemp(prefix="effort-model-"))))
    splits = training_split(model)
    totals = {name: (Effort(), Effort()) for name in (("all", "train", "held-out") if splits else ("all",))}
    for line in (photos / "labels.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        truth = [Annotation(b["class_id"], b["x1"], b["y1"], b["x2"], b["y2"]) for b in row["boxes"]]
        result = detector.detect_file(photos / row["image"])
        offered = [Annotation(d.class_id, *d.box) for d in result.detections]
        with_model, _ = correct(offered, truth)
        without_model, _ = correct([], truth)
        groups = ["all"]
        if splits is not None:
            groups.append("train" if splits.get(PurePosixPath(row["image"]).name) == "train" else "held-out")
        for name in groups:
            totals[name][0].add(with_model)
            totals[name][1].add(without_model)
    return {
        f"{name} {kind}": effort.to_json()
        for name, pair in totals.items()
        for kind, effort in zip(("with pre-labels", "without"), pair, strict=True)
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a model archive (model.tar.gz)")
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder with labels.jsonl and images/")
    args = parser.parse_args(argv)
    figures = measure(args.photos, args.model)
    print(f"{'photos':<28}{'images':>7}{'boxes':>7}{'drawn':>7}{'adjusted':>9}{'deleted':>8}{'kept':>6}{'actions':>9}")
    for name, row in figures.items():
        print(
            f"{name:<28}{row['images']:>7}{row['true_boxes']:>7}{row['drawn']:>7}{row['adjusted']:>9}"
            f"{row['deleted']:>8}{row['kept']:>6}{row['actions']:>9}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
