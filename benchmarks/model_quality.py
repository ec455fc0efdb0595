"""Benchmark of model quality on real photos: the training steps at the configured defaults. Prints figures.

    .venv/bin/python benchmarks/model_quality.py                       # config.yaml's defaults (use a GPU)
    .venv/bin/python benchmarks/model_quality.py --quick               # 320 px, 30 epochs: a CPU smoke run
    .venv/bin/python benchmarks/model_quality.py --epochs 150 --image-size 480 --augmentation flipud=0

On the reference photos (datasets/reference-tags: real tags with human-drawn scratch boxes), it

1. holds out whole source photos (`--holdout-fraction`, by a hash of the photo each crop was cut
   from, so no crop of a held-out tag is trained on): photos the run never sees;
2. runs the training pipeline's steps on the rest, exactly as `training.local` does (export and QA,
   split with the configured minimums, train, ONNX export, evaluation, the gate) - with a
   `--champion` archive the gate compares, as in the pipeline;
3. scores the exported ONNX model on the held-out photos.

It prints the test split's mAP50 and mAP50-95 with 95% bootstrap intervals, the gate's verdict,
the same on the held-out photos against the goals, training time and the device it ran on, and
writes everything to `results.json` under --output (default benchmarks/results/model-quality/,
git-ignored). Runs on the CPU (slowly: use --quick or smaller settings) and on a GPU when one is there.
"""

# ruff: noqa: PLC0415 - heavy imports only where used

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")  # Ultralytics must not reach the internet

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASET = REPO_ROOT / "datasets" / "reference-tags"
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results" / "model-quality"
GOALS = {"mAP50": 0.93, "mAP50-95": 0.66}  # on photos the run never saw (the model-quality issue)
# The reference photos are quadrants of larger photos: `<photo>-cropped-left-top.jpg` and so on.
SOURCE_PHOTO = r"-cropped-[a-z]+-[a-z]+$"
sys.path.insert(0, str(REPO_ROOT))


def device_name(device: str | None) -> str:
    import torch

    if (device or "") != "cpu" and torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor() or "unknown",
    )
    return f"CPU {model}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def held_out(name: str, fraction: float, pattern: str) -> bool:
    """Whether a photo's source is held out (a hash of the source photo's name, so all its crops go together)."""
    source = re.sub(pattern, "", Path(name).stem)
    return int.from_bytes(hashlib.sha256(source.encode()).digest()[:8], "big") / 2**64 < fraction


def split_labels(labels: Path, work: Path, fraction: float, pattern: str) -> tuple[Path, list[dict[str, Any]]]:
    """The labels file without the held-out photos (for the run), and the held-out rows."""
    kept: list[dict[str, Any]] = []
    holdout: list[dict[str, Any]] = []
    for line in labels.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            (holdout if held_out(row["image"], fraction, pattern) else kept).append(row)
    work.mkdir(parents=True, exist_ok=True)
    run_labels = labels.parent / f".benchmark-{work.name}.jsonl"  # beside the images, which it names relatively
    run_labels.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
    return run_labels, holdout


def holdout_dataset(rows: list[dict[str, Any]], images: Path, destination: Path, class_names: list[str]) -> Path:
    """The held-out photos as a prepared dataset whose test split holds all of them."""
    from shared.contracts import Annotation
    from training.steps.prepare import PREPARED_FILE, PreparedDataset, file_stem, write_data_yaml, yolo_label_lines

    shutil.rmtree(destination, ignore_errors=True)
    for sub in ("images", "labels"):
        for split in ("train", "val", "test"):
            (destination / sub / split).mkdir(parents=True)
    splits = {}
    for row in rows:
        uri = f"s3://holdout/{row['image']}"
        stem = file_stem(uri)
        shutil.copyfile(images / row["image"], destination / "images" / "test" / f"{stem}{Path(row['image']).suffix}")
        boxes = [Annotation(**box) for box in row["boxes"]]
        lines = yolo_label_lines(boxes, row["width"], row["height"])
        (destination / "labels" / "test" / f"{stem}.txt").write_text("".join(f"{x}\n" for x in lines))
        splits[uri] = "test"
    dataset = PreparedDataset(
        root=destination,
        dataset_version="holdout",
        class_names=tuple(class_names),
        counts={"train": 0, "val": 0, "test": len(rows)},
        boxes={"train": 0, "val": 0, "test": sum(len(r["boxes"]) for r in rows)},
        splits=splits,
    )
    (destination / PREPARED_FILE).write_text(json.dumps(dataset.to_json()), encoding="utf-8")
    write_data_yaml(destination, class_names)
    return destination


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DATASET, help="folder with labels.jsonl and the photos")
    parser.add_argument("--output", type=Path, default=None, help="run folder (default: under benchmarks/results/)")
    parser.add_argument("--holdout-fraction", type=float, default=0.2, help="share of source photos never trained on")
    parser.add_argument("--group-pattern", default=SOURCE_PHOTO, help="regex removed from a name to get its photo")
    parser.add_argument("--quick", action="store_true", help="320 px, 30 epochs: minutes on a CPU, not the defaults")
    parser.add_argument("--model-size", choices=["n", "s", "m", "l", "x"])
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--patience", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--augmentation", action="append", default=[], metavar="NAME=VALUE", help="e.g. flipud=0")
    parser.add_argument("--champion", type=Path, help="an approved model's model.tar.gz for the gate to compare")
    parser.add_argument("--device", help="cpu, 0, ... (default: the first GPU, else the CPU)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="data loader processes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from shared.config import load_settings
    from training import local
    from training.steps import comparison
    from training.steps.prepare import PreparedDataset
    from training.steps.scoring import score_images

    settings = load_settings()
    overrides: dict[str, Any] = {
        "model_size": args.model_size,
        "epochs": args.epochs or (30 if args.quick else None),
        "image_size": args.image_size or (320 if args.quick else None),
        "batch_size": args.batch_size,
        "patience": args.patience,
        "learning_rate": args.learning_rate,
        "champion": args.champion,
        "device": args.device,
        "workers": args.workers,
    }
    options = local.LocalRunOptions.from_settings(settings, **overrides)
    for item in args.augmentation:
        name, _, value = item.partition("=")
        options = dataclasses.replace(options, augmentation={**options.augmentation, name: float(value)})
    stamp = time.strftime("%Y%m%d-%H%M%S")
    output = (
        args.output or RESULTS_DIR / f"{stamp}-{options.model_size}-{options.image_size}px-{options.epochs}ep"
    ).resolve()
    run_labels, holdout_rows = split_labels(
        args.dataset / "labels.jsonl", output, args.holdout_fraction, args.group_pattern
    )
    device = device_name(options.device)
    print(f"device: {device}")
    print(
        f"settings: YOLOv8{options.model_size}, {options.epochs} epochs (patience {options.patience}), "
        f"{options.image_size} px, batch {options.batch_size}, {options.optimizer} lr {options.learning_rate}, "
        f"augmentation {options.augmentation}"
    )
    try:
        offline_store, images = local.labels_file_source(run_labels, output / "labels", settings.project.class_names)
        started = time.perf_counter()
        result = local.run_local(offline_store=offline_store, images=images, output=output / "run", options=options)
        elapsed = time.perf_counter() - started
    finally:
        run_labels.unlink(missing_ok=True)
    holdout = holdout_dataset(holdout_rows, args.dataset, output / "holdout", list(settings.project.class_names))
    scored, _ = score_images(
        result.onnx_path,
        PreparedDataset.load(holdout),
        image_size=options.image_size,
        iou_threshold=options.iou_threshold,
        work_dir=output / "holdout-work",
        name="holdout",
    )
    never_seen = comparison.score(scored)
    precision, recall = comparison.precision_recall_at(scored, options.confidence_threshold)
    paired = None
    if args.champion is not None:  # the other model on the same held-out photos: a paired comparison
        from training.steps.evaluate import load_champion

        champion = load_champion(args.champion, package=str(args.champion), work_dir=output / "holdout-champion")
        theirs, _ = score_images(
            champion.onnx_path,
            PreparedDataset.load(holdout),
            image_size=champion.manifest.input_size,
            iou_threshold=champion.manifest.iou_threshold,
            work_dir=output / "holdout-work",
            name="holdout-champion",
        )
        paired = comparison.compare(scored, theirs)
    report = result.evaluation
    figures = {
        "device": device,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(result.options).items()},
        "training_seconds": round(elapsed, 1),
        "epochs_run": len(result.training.history),
        "images": {"run": dict(result.prepared.counts), "held_out": len(holdout_rows)},
        "test_split": {"metrics": report.metrics, "intervals": report.intervals},
        "gate": report.gate,
        "held_out": {**never_seen.to_json(), "precision": precision, "recall": recall},
        "held_out_vs_champion": paired.to_json() if paired else None,
        "goals": {
            name: {"goal": goal, "value": getattr(never_seen, "map50" if name == "mAP50" else "map50_95")}
            for name, goal in GOALS.items()
        },
    }
    (output / "results.json").write_text(json.dumps(figures, indent=1), encoding="utf-8")

    def line(label: str, value: float, interval: Sequence[float]) -> str:
        return f"  {label:<10} {value:.3f}  (95% interval {interval[0]:.3f} to {interval[1]:.3f})"

    print(f"\ntraining + evaluation: {elapsed / 60:.1f} min on {device}, {len(result.training.history)} epochs run")
    print(f"photos: {dict(result.prepared.counts)} in the run, {len(holdout_rows)} held out (never seen)")
    print(f"test split ({report.images} images):")
    for name in ("mAP50", "mAP50-95"):
        print(line(name, report.metrics[name], report.intervals[name]))
    print(f"gate: {report.gate['verdict'].upper()} - {report.gate['reason']}")
    print(
        f"held-out photos ({never_seen.images}), precision {precision:.3f}, recall {recall:.3f} at "
        f"confidence {options.confidence_threshold}:"
    )
    for name, value, interval in (
        ("mAP50", never_seen.map50, never_seen.map50_interval),
        ("mAP50-95", never_seen.map50_95, never_seen.map50_95_interval),
    ):
        verdict = "met" if value >= GOALS[name] else "NOT MET"
        print(f"{line(name, value, (interval.low, interval.high))}  goal >= {GOALS[name]:.2f}: {verdict}")
    if paired is not None:
        for name, value, interval in (
            ("mAP50", paired.map50_difference, paired.map50_interval),
            ("mAP50-95", paired.map50_95_difference, paired.map50_95_interval),
        ):
            print(
                f"  vs {args.champion.name} on the same photos: {name} {value:+.3f} "
                f"(95% interval {interval.low:+.3f} to {interval.high:+.3f})"
            )
    print(f"results: {output / 'results.json'}; report: {result.report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
