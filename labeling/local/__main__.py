"""Try a Label Studio labeling round on this machine: `make label-studio-local` (or `python -m labeling.local`).

    .venv/bin/python -m labeling.local --photos datasets/reference-tags \\
        --model ../artifacts/reference-model/model.tar.gz --output local-labels [--budget 20] [--simulate]

1. Starts Label Studio (from .venv-label-studio, SQLite) and an S3 on loopback, and puts the photos
   under raw-images/ of a local data bucket.
2. Runs the round's own steps: find the unlabeled photos, select them (budget), pre-label them with
   the model archive (the device's detector), create the Label Studio tasks with the model's boxes.
3. You label in the browser (the address, user and password are printed), then press Enter; you review,
   then press Enter. With `--simulate` a simulated labeler corrects the model's boxes to the photos'
   human boxes (labels.jsonl) and a reviewer approves them, and the effort is printed.
4. The verified records go to `<output>/offline-store/` (the feature group's offline-store layout) and
   the photos to `<output>/images/`: what `python -m training.local --offline-store ... --images ...` reads.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import boto3

from labeling.local.effort import Effort, correct
from labeling.local.server import LabelStudioServer
from labeling.runtime import label_studio as ls
from labeling.runtime import pre_labels as pl
from labeling.runtime import rounds
from labeling.runtime.config import LabelingConfig
from labeling.runtime.ground_truth import load_task_ui, run_identity
from labeling.runtime.label_studio_api import LabelStudioClient
from shared.config import DEFAULT_CONFIG_FILE, load_settings
from shared.contracts import Annotation

BUCKET = "local-labeling-data"
REGION = "eu-west-1"
RAW_PREFIX = "raw-images/"


class _NoFeatureStore:
    """Nothing is labeled yet on a fresh local run: every photo is a candidate."""

    def batch_get_record(self, **_: Any) -> dict[str, Any]:
        return {"Records": [], "Errors": [], "UnprocessedIdentifiers": []}


def _start_s3() -> tuple[Any, str]:
    from moto.server import ThreadedMotoServer  # noqa: PLC0415 - a test tool, only for this command

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def _truth(photos: Path) -> dict[str, list[Annotation]]:
    boxes: dict[str, list[Annotation]] = {}
    labels = photos / "labels.jsonl"
    if labels.is_file():
        for line in labels.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                boxes[Path(row["image"]).name] = [
                    Annotation(b["class_id"], b["x1"], b["y1"], b["x2"], b["y2"]) for b in row.get("boxes", [])
                ]
    return boxes


def run(args: argparse.Namespace) -> int:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the loopback S3's request log
    settings = load_settings(args.config)
    class_names = tuple(settings.project.class_names)
    s3_server, endpoint = _start_s3()
    studio = LabelStudioServer(s3_endpoint=endpoint, region=REGION, **({"port": args.port} if args.port else {}))
    print(f"Starting Label Studio (first start migrates its database: a minute or two) on {studio.url} ...")
    studio.start()
    try:
        return _round(args, studio, endpoint, class_names, settings.labeling.review)
    finally:
        studio.stop()
        s3_server.stop()


def _round(
    args: argparse.Namespace, studio: LabelStudioServer, endpoint: str, class_names: tuple[str, ...], review: str
) -> int:
    s3 = boto3.client(  # the loopback S3 takes any credentials
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - not a secret
    )
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    images = sorted(p for p in (args.photos / "images").glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    for path in images:
        s3.upload_file(str(path), BUCKET, f"{RAW_PREFIX}reference/{path.name}")
    config = LabelingConfig(
        project_prefix="local",
        data_bucket=BUCKET,
        feature_group="local-labels",
        class_names=class_names,
        raw_prefix=RAW_PREFIX,
        jobs_prefix="labeling-jobs/",
        workforce=None,
        review_workforce=None,
        backend="label_studio",
        review_mode=review,
        max_images_per_job=args.budget,
        label_studio_url=studio.url,
        label_studio_token_secret="local",  # noqa: S106 - a name; the local server's token is passed directly
    )
    run_id = run_identity(
        project_prefix="local", jobs_prefix="labeling-jobs/", execution_arn="local", start_time="2026-01-01T00:00:00Z"
    )
    rounds.list_unlabeled_images(
        s3, _NoFeatureStore(), bucket=BUCKET, prefix=RAW_PREFIX, feature_group="local-labels", run_prefix=run_id.prefix
    )
    rounds.select_images(s3, bucket=BUCKET, run_prefix=run_id.prefix, budget=args.budget)
    selected = rounds.read_selected(s3, bucket=BUCKET, run_prefix=run_id.prefix)
    if args.model:
        model_dir = pl.extract_model_archive(args.model, Path(tempfile.mkdtemp(prefix="local-model-")))
        detector = pl.detector_module().load_detector(model_dir)
        model = pl.ModelRef(arn=f"local:{args.model}", name=args.model.stem.replace(".tar", ""), model_data_url="local")
        cursor = pl.pre_label_images(
            s3, None, bucket=BUCKET, run_prefix=run_id.prefix, group_name="", images=selected, model=model,
            load_detector=lambda _url: detector,
        )  # fmt: skip
        print(f"Pre-labeled {cursor.labeled} photos with {cursor.boxes} boxes from {args.model}")
    client = LabelStudioClient(studio.url, studio.token)
    prepared = ls.prepare_labeling_tasks(client, s3, _NoFeatureStore(), config=config, run=run_id, region=REGION)
    print(f"\nLabel Studio: {prepared['url']}\n  user {studio_user()}  password {studio.password}")
    if args.screenshot:
        _screenshot(client, prepared, studio, args.screenshot)
    truth = _truth(args.photos)
    effort = Effort()
    if args.simulate:
        effort = _simulate_labelers(client, prepared["project"], run_id.id, truth, class_names)
    else:
        input("Label some tasks in the browser (Submit each), then press Enter here ... ")
    review_tasks = ls.prepare_review_tasks(client, s3, config=config, run=run_id, region=REGION)
    if args.simulate:
        approve = load_task_ui(class_names).approve if review == "verification" else None
        _simulate_reviewers(client, review_tasks["project"], run_id.id, approve)
    else:
        print(f"Review: {review_tasks['url']}")
        input("Approve or reject each image's boxes (or correct them), then press Enter here ... ")
    verdicts = ls.review_verdicts(client, s3, config=config, run=run_id)
    output = args.output
    (output / "images").mkdir(parents=True, exist_ok=True)
    from training.steps.dataset import write_offline_store  # noqa: PLC0415 - training's own writer

    path = write_offline_store(verdicts.records, output / "offline-store")
    for record in verdicts.records:
        name = record.image_uri.rsplit("/", 1)[1]
        shutil.copy2(args.photos / "images" / name, output / "images" / name)
    ls.settle_written(client, verdicts.settle, run_id=run_id.id)
    print(f"\n{len(verdicts.records)} verified records ({verdicts.approved} approved) in {path}")
    if args.simulate:
        print(f"simulated labeler: {json.dumps(effort.to_json())}")
    print(
        f"Train on them: .venv/bin/python -m training.local --offline-store {output / 'offline-store'} "
        f"--images {output / 'images'} --output {output / 'run'}"
    )
    if args.keep_running:
        input(f"Label Studio keeps running on {studio.url}; press Enter to stop it ... ")
    return 0


def _screenshot(client: LabelStudioClient, prepared: dict[str, Any], studio: LabelStudioServer, path: Path) -> None:
    """The labeling page of the round's first pre-labeled task, taken by a headless Chromium."""
    tasks = [t for t in client.tasks(prepared["project"]) if t.data.get("pre_label_model")]
    task = max(tasks, key=lambda t: float(t.data.get("priority") or 0)) if tasks else None
    if task is None:
        print("no pre-labeled task to show: no screenshot")
        return
    url = f"{studio.url}/projects/{prepared['project']}/data?tab={prepared['view']}&task={task.id}"
    script = Path(__file__).with_name("screenshot.cjs")
    done = subprocess.run(  # noqa: S603 - node with our own script
        ["node", str(script), url, studio_user(), studio.password, str(path)],  # noqa: S607 - node from PATH
        capture_output=True,
        text=True,
        check=False,
    )
    print(done.stdout.strip() or f"screenshot failed: {done.stderr.strip()[-800:]}")


def studio_user() -> str:
    from labeling.local.server import USER  # noqa: PLC0415

    return USER


def _simulate_labelers(
    client: LabelStudioClient,
    project: int,
    run_id: str,
    truth: dict[str, list[Annotation]],
    class_names: tuple[str, ...],
) -> Effort:
    """Each task answered as a person would: the offered boxes corrected to the photo's human boxes."""
    total = Effort()
    for listed in client.tasks(project, filters=[ls.data_filter("round", run_id)]):
        task = client.task(listed.id)
        width, height = int(task.data["width"]), int(task.data["height"])
        offered: list[Annotation] = []
        for prediction in task.predictions:
            boxes, _ = ls.from_regions(prediction.get("result"), width=width, height=height, class_names=class_names)
            offered.extend(boxes)
        effort, submitted = correct(offered, truth.get(str(task.data["image"]).rsplit("/", 1)[1], []))
        total.add(effort)
        client.create_annotation(
            task.id, result=ls.to_regions(submitted, width=width, height=height, class_names=class_names)
        )
    return total


def _simulate_reviewers(client: LabelStudioClient, project: int, run_id: str, approve: str | None) -> None:
    """Each review answered: the labeler's boxes approved as shown (verification), or submitted (adjustment)."""
    for listed in client.tasks(project, filters=[ls.data_filter("round", run_id)]):
        task = client.task(listed.id)
        (prediction,) = task.predictions
        verdict = [{"from_name": ls.VERDICT, "to_name": ls.IMAGE, "type": "choices", "value": {"choices": [approve]}}]
        client.create_annotation(task.id, result=[*prediction["result"], *(verdict if approve else [])])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labeling.local", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--photos",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "datasets" / "reference-tags",
        help="a folder with images/ (and labels.jsonl with the human boxes, for --simulate)",
    )
    parser.add_argument("--model", type=Path, help="model archive (model.tar.gz) whose boxes are offered")
    parser.add_argument("--output", type=Path, default=Path("local-labels"))
    parser.add_argument("--budget", type=int, default=20, help="photos in the round")
    parser.add_argument("--port", type=int, default=0, help="Label Studio's port (default: a free one)")
    parser.add_argument("--simulate", action="store_true", help="a simulated labeler and reviewer answer")
    parser.add_argument("--keep-running", action="store_true", help="leave Label Studio up until Enter")
    parser.add_argument("--screenshot", type=Path, help="save the labeling page of a pre-labeled task (PNG)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_FILE)
    args = parser.parse_args(argv)
    if not (args.photos / "images").is_dir():
        parser.error(f"--photos {args.photos}: no images/ folder")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
