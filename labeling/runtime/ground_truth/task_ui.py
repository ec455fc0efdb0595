"""The worker task files of a job: the label categories and the task template, from `runtime/task_ui/`."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from labeling.runtime.errors import ConfigurationError
from labeling.runtime.ground_truth.jobs import (
    ADJUSTMENT,
    BOXES,
    BOXES_ATTRIBUTE,
    PRE_LABEL_ATTRIBUTE,
    PRE_LABELED,
    VERIFICATION,
)

TASK_UI_DIR = Path(__file__).resolve().parent.parent / "task_ui"
LABEL_CATEGORIES_FILE = TASK_UI_DIR / "label-categories.json"
INSTRUCTIONS_FILE = TASK_UI_DIR / "instructions.html"


@dataclass(frozen=True)
class TaskUi:
    """The worker-facing texts of `task_ui/label-categories.json`, checked against the configured classes."""

    class_names: tuple[str, ...]
    class_descriptions: Mapping[str, str]
    approve: str
    reject: str


def load_task_ui(class_names: Sequence[str], path: Path = LABEL_CATEGORIES_FILE) -> TaskUi:
    """Read the label categories file; every configured class needs a description, and nothing else may be there."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        descriptions = {str(k): str(v) for k, v in dict(raw["classes"]).items()}
        approve, reject = str(raw["verification"]["approve"]), str(raw["verification"]["reject"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ConfigurationError(f"{path}: not a valid label categories file ({error})") from None
    missing = [name for name in class_names if name not in descriptions]
    unknown = sorted(set(descriptions) - set(class_names))
    problems = []
    if missing:
        problems.append(f"no description for class(es) {', '.join(missing)}")
    if unknown:
        problems.append(f"description(s) for class(es) not in project.class_names: {', '.join(unknown)}")
    if not approve.strip() or not reject.strip() or approve == reject:
        problems.append("verification.approve and verification.reject must be two different, non-empty answers")
    if problems:
        raise ConfigurationError(f"{path}: " + "; ".join(problems))
    return TaskUi(tuple(class_names), {name: descriptions[name] for name in class_names}, approve, reject)


def label_category_config(kind: str, ui: TaskUi) -> dict[str, Any]:
    """The label category configuration file of a job (LabelCategoryConfigS3Uri).

    Bounding-box and adjustment jobs list the classes in class-id order (Ground Truth's class_id is the
    index in this list); a verification job lists the reviewer's two answers, approve first.
    """
    labels = [ui.approve, ui.reject] if kind == VERIFICATION else list(ui.class_names)
    return {"document-version": "2018-11-28", "labels": [{"label": label} for label in labels]}


def render_task_template(kind: str, ui: TaskUi) -> str:
    """The worker task template (UiTemplateS3Uri) of a job: a Liquid template with crowd HTML elements."""
    files = {
        BOXES: "bounding-box.liquid.html",
        PRE_LABELED: "adjustment.liquid.html",
        VERIFICATION: "verification.liquid.html",
        ADJUSTMENT: "adjustment.liquid.html",
    }
    headers = {
        BOXES: "Draw a tight box around every defect on the tag",
        PRE_LABELED: "The model's boxes: correct them so that every defect has one tight box",
        VERIFICATION: "Are these boxes correct and complete?",
        ADJUSTMENT: "Correct the boxes so that every defect has one tight box",
    }
    class_list = "\n".join(
        f"  <dt>{html.escape(name)}</dt>\n  <dd>{html.escape(ui.class_descriptions[name])}</dd>"
        for name in ui.class_names
    )
    instructions = Template(INSTRUCTIONS_FILE.read_text(encoding="utf-8")).substitute(class_list=class_list)
    summary = "\n".join(
        f"      <p><b>{html.escape(name)}</b>: {html.escape(ui.class_descriptions[name])}</p>"
        for name in ui.class_names
    )
    values = {
        "header": html.escape(headers[kind]),
        "labels_json": html.escape(json.dumps(list(ui.class_names))),
        "categories_json": html.escape(json.dumps([ui.approve, ui.reject])),
        "approve": html.escape(ui.approve),
        "reject": html.escape(ui.reject),
        "boxes_attribute": PRE_LABEL_ATTRIBUTE if kind == PRE_LABELED else BOXES_ATTRIBUTE,
        "full_instructions": instructions,
        "class_summary": summary,
    }
    return Template((TASK_UI_DIR / files[kind]).read_text(encoding="utf-8")).substitute(values)
