"""Import existing labels into the label feature group from the command line.

    .venv/bin/python -m labeling.seed labels.jsonl [--env prod] [--base-uri s3://.../raw-images/] [--dry-run]

The file is CSV or JSON lines, one row per image (format: `labeling/runtime/seeding.py`). Malformed
rows are printed with their line numbers and skipped; the valid rows load. Running the same file again
writes nothing twice. Exit status: 0 when every row loaded, 1 when some rows were malformed (the valid
ones still loaded), 2 when the file or the configuration cannot be used at all.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from labeling.runtime.errors import LabelingError
from labeling.runtime.feature_store import client_config
from labeling.runtime.seeding import import_seed_records, parse_seed_file
from shared.config import DEFAULT_CONFIG_FILE, ConfigError, load_settings
from shared.names import RAW_IMAGE_PREFIX, resource_names

ClientFactory = Callable[[str], Any]


def _boto3_clients(service: str) -> Any:
    import boto3  # noqa: PLC0415 - only needed against a real account

    return boto3.client(service, config=client_config())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m labeling.seed", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, help="CSV or JSON-lines file, one row per image")
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG_FILE, help="configuration file (default: config.yaml)"
    )
    parser.add_argument("--env", default=None, help="environment of the configuration file (e.g. prod)")
    parser.add_argument(
        "--base-uri",
        default=None,
        help="prefix for rows that name an image relatively (`image`); default: the data bucket's raw-image prefix",
    )
    parser.add_argument("--job", default="seed", help="labeling_job of rows that name none (default: seed)")
    parser.add_argument("--dry-run", action="store_true", help="check the file and report; write nothing")
    return parser


def main(
    argv: Sequence[str] | None = None, *, clients: ClientFactory = _boto3_clients, out: TextIO = sys.stdout
) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config, environment=args.env)
        text = args.file.read_text(encoding="utf-8")
    except (ConfigError, OSError, UnicodeDecodeError) as error:
        print(f"error: {error}", file=out)
        return 2

    def raw_image_prefix() -> str:
        """Rows name images relatively: they live under this account's data bucket (asked only then)."""
        sts = clients("sts")
        names = resource_names(settings, account=sts.get_caller_identity()["Account"], region=sts.meta.region_name)
        return f"s3://{names.data_bucket}/{RAW_IMAGE_PREFIX}"

    base_uri: str | Callable[[], str] = args.base_uri or raw_image_prefix
    feature_group = resource_names(settings, account="-", region="-").label_feature_group
    try:
        seed = parse_seed_file(
            text,
            filename=args.file.name,
            class_names=settings.project.class_names,
            base_uri=base_uri,
            default_job=args.job,
        )
    except LabelingError as error:
        print(f"error: {error}", file=out)
        return 2
    for problem in seed.errors:
        print(f"{args.file}:{problem.line}: {problem.message}", file=out)
    print(f"{seed.rows} row(s): {len(seed.records)} valid, {len(seed.errors)} malformed", file=out)
    if args.dry_run:
        print("dry run: nothing written", file=out)
    else:
        report, _ = import_seed_records(clients("sagemaker-featurestore-runtime"), feature_group, seed.records)
        print(
            f"{feature_group}: {report.written} written, {report.unchanged} already there, "
            f"{report.superseded} older than the stored label (kept the newer)",
            file=out,
        )
    return 1 if seed.errors else 0


if __name__ == "__main__":
    sys.exit(main())
