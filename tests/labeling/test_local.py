"""The local try-out and its simulated labeler."""

from __future__ import annotations

import json

import pytest

from labeling.local import __main__ as local
from labeling.local.effort import correct
from shared.contracts import Annotation, LabelRecord
from shared.synthetic import write_dataset

BOX = Annotation(0, 10, 10, 50, 40)


@pytest.mark.parametrize(
    ("offered", "truth", "counts"),
    [
        ([], [BOX], {"drawn": 1, "adjusted": 0, "deleted": 0, "kept": 0}),  # no pre-label: every box drawn
        ([BOX], [BOX], {"drawn": 0, "adjusted": 0, "deleted": 0, "kept": 1}),  # right: left alone
        ([Annotation(0, 12, 12, 56, 44)], [BOX], {"drawn": 0, "adjusted": 1, "deleted": 0, "kept": 0}),  # nudged
        ([Annotation(0, 200, 200, 240, 230)], [BOX], {"drawn": 1, "adjusted": 0, "deleted": 1, "kept": 0}),
        ([Annotation(1, 10, 10, 50, 40)], [BOX], {"drawn": 1, "adjusted": 0, "deleted": 1, "kept": 0}),  # wrong class
        ([BOX], [], {"drawn": 0, "adjusted": 0, "deleted": 1, "kept": 0}),  # a false alarm removed
        ([], [], {"drawn": 0, "adjusted": 0, "deleted": 0, "kept": 0}),  # "no defect", confirmed
    ],
)
def test_the_simulated_labeler_counts_what_a_person_does(offered, truth, counts):
    effort, submitted = correct(offered, truth)
    assert {key: getattr(effort, key) for key in counts} == counts
    assert effort.actions == counts["drawn"] + counts["adjusted"] + counts["deleted"]
    # what it submits is the truth, except boxes close enough to be left as offered
    assert len(submitted) == len(truth)


@pytest.mark.slow
def test_the_local_round_writes_verified_records_where_training_reads_them(studio, tmp_path, capsys):
    photos = tmp_path / "photos"
    samples = write_dataset(photos / "images", 4, seed=5)
    (photos / "labels.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "image": f"images/{sample.path.name}",
                    "boxes": [
                        {"class_id": b.class_id, "x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2} for b in sample.boxes
                    ],
                }
            )
            + "\n"
            for sample in samples
        )
    )
    output = tmp_path / "out"
    assert local.main(["--photos", str(photos), "--output", str(output), "--budget", "3", "--simulate"]) == 0
    printed = capsys.readouterr().out
    assert "3 verified records (3 approved)" in printed and '"drawn": ' in printed
    from training.steps.dataset import read_offline_store

    records = [LabelRecord.from_values(row) for row in read_offline_store(output / "offline-store")]
    assert len(records) == 3 and all(record.approved for record in records)
    assert {record.labeling_job.split("/")[0] for record in records} == {"local-boxes"}
    assert sorted(p.name for p in (output / "images").iterdir()) == sorted(
        record.image_uri.rsplit("/", 1)[1] for record in records
    )
    by_name = {sample.path.name: sample for sample in samples}
    for record in records:  # the simulated labeler drew the photos' own boxes
        sample = by_name[record.image_uri.rsplit("/", 1)[1]]
        assert len(record.annotations) == len(sample.boxes)
    assert f"--offline-store {output / 'offline-store'} --images {output / 'images'}" in printed
