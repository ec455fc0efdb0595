"""A picture of a synthesized CloudWatch dashboard: its grid of widgets, their titles and what each one shows.

    .venv/bin/python -m tests.tools.dashboard_preview      # every app's dashboard, into the apps' docs/

It synthesizes the apps, takes each dashboard's body out of the templates (the JSON CloudWatch
receives) and draws each widget where CloudWatch places it (24 columns, rows of about 50 px). The
rendering is matplotlib's, with no font download. It shows no data: the metrics exist only once devices
report. Each box lists what the widget graphs (metric, statistic, SEARCH expression, log query,
alarms), so what the picture shows can be checked against the template.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
COLUMNS = 24


def widget_lines(widget: dict[str, Any]) -> list[str]:
    """What a widget shows, one line per series (or the query, the alarms, the text)."""
    properties = widget.get("properties", {})
    kind = widget["type"]
    if kind == "text":
        return [line.lstrip("# ") for line in properties.get("markdown", "").splitlines() if line.strip()]
    if kind == "alarm":
        return [str(arn).rsplit(":", 1)[-1] for arn in properties.get("alarms", [])]
    if kind == "log":
        return [part.strip() for part in properties.get("query", "").split("|")[1:]]
    lines = []
    for series in properties.get("metrics", []):
        options = series[-1] if series and isinstance(series[-1], dict) else {}
        if "expression" in options:
            lines.append(f"{options.get('label') or 'expression'}: {options['expression']}")
        else:
            names = [part for part in series if isinstance(part, str)]
            if names:
                statistic = options.get("stat", "")
                label = options.get("label") or (names[1] if len(names) > 1 else names[0])
                lines.append(f"{label} ({statistic})" if statistic else label)
    return lines


def render(body: dict[str, Any], output: Path, *, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot
    from matplotlib.patches import Rectangle

    widgets = body["widgets"]
    rows = max(w["y"] + w["height"] for w in widgets)
    figure = pyplot.figure(figsize=(16, rows * 0.42 + 0.6), dpi=110)
    axes = figure.add_axes((0.005, 0.005, 0.99, 0.99 - 0.5 / (rows * 0.42 + 0.6)))
    axes.set_xlim(0, COLUMNS)
    axes.set_ylim(rows, 0)
    axes.axis("off")
    figure.suptitle(title, x=0.01, ha="left", fontsize=12, fontweight="bold")
    colours = {"metric": "#f3f7fb", "log": "#f6f3fb", "alarm": "#fbf5ef", "text": "#ffffff"}
    for widget in widgets:
        x, y, width, height = widget["x"], widget["y"], widget["width"], widget["height"]
        axes.add_patch(
            Rectangle((x + 0.08, y + 0.08), width - 0.16, height - 0.16, facecolor=colours.get(widget["type"], "#fff"),
                      edgecolor="#9aa7b4", linewidth=0.8)
        )  # fmt: skip
        heading = widget.get("properties", {}).get("title") or widget["type"]
        axes.text(x + 0.3, y + 0.55, heading, fontsize=8.5, fontweight="bold", va="center")
        wrap = max(20, int(width * 6.2))
        text = "\n".join(textwrap.shorten(line, wrap * 2, placeholder=" ...") for line in widget_lines(widget))
        text = "\n".join(textwrap.fill(line, wrap) for line in text.splitlines())
        axes.text(x + 0.3, y + 1.1, text, fontsize=6.3, va="top", family="monospace", color="#34495e")
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output)
    pyplot.close(figure)
    return output


def synthesized_dashboards() -> dict[str, dict[str, Any]]:
    """Name -> body of every app's dashboard, as the example configuration synthesizes them."""
    from shared.config import load_settings
    from tests.e2e.templates import synthesize
    from tests.helpers.cdk_assembly import REPO_ROOT

    apps = synthesize(load_settings(REPO_ROOT / "config.yaml"))
    found = {}
    for template in vars(apps).values():
        for logical_id, alarm in template.of_type("AWS::CloudWatch::Alarm").items():  # an alarm ARN ends with its name
            name = template.render(alarm["Properties"]["AlarmName"])
            template.attributes[f"{logical_id}.Arn"] = f"arn:aws:cloudwatch:eu-west-1:123456789012:alarm:{name}"
        for dashboard in template.of_type("AWS::CloudWatch::Dashboard").values():
            properties = template.render(dashboard["Properties"])
            found[str(properties["DashboardName"])] = json.loads(properties["DashboardBody"])
    return found


# Where each dashboard's picture goes (its app's guide shows it), by the end of the dashboard's name.
PICTURES = {
    "-labeling": Path("labeling/docs/dashboard.png"),
    "-training": Path("training/docs/dashboard.png"),
    "-edge-fleet": Path("edge_deployment/docs/fleet-dashboard.png"),
    "-loop": Path("edge_deployment/docs/loop-dashboard.png"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT, help="the pictures go under it, as in the repo")
    args = parser.parse_args(argv)
    for name, body in sorted(synthesized_dashboards().items()):
        (relative,) = [path for suffix, path in PICTURES.items() if name.endswith(suffix)]
        title = f"CloudWatch dashboard {name} (layout from the synthesized template)"
        print(render(body, args.output_dir / relative, title=title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
