"""The insights page of a run (`insights/report.md`) and its plots: the deep model
against the linear reference, the compute estimate against the measured epoch time,
the meaning map, and the storyboard."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ray_app.insights.story import CATEGORIES  # noqa: E402
from ray_app.runs import InsightsLayout  # noqa: E402


def _class_colors(count: int) -> list[Any]:
    cmap = plt.get_cmap("tab10" if count <= 10 else "tab20" if count <= 20 else "viridis")
    return [cmap(i if count <= 20 else i / max(count - 1, 1)) for i in range(count)]


def draw_meaning_map(projection: dict[str, Any], rows: list[dict[str, Any]], label_names: list[str], path: Path) -> None:
    """Each val_test row where the projection puts it, coloured by its true class; a
    black cross on every wrong prediction."""
    fig, ax = plt.subplots(figsize=(7.2, 6.0))
    colors = _class_colors(len(label_names))
    x, y = np.array(projection["x"]), np.array(projection["y"])
    labels = np.array([label_names.index(r["label"]) for r in rows])
    wrong = np.array([not r["correct"] for r in rows])
    for k, name in enumerate(label_names):
        mine = labels == k
        if mine.any():
            ax.scatter(x[mine & ~wrong], y[mine & ~wrong], s=24, color=colors[k], label=name, alpha=0.85,
                       edgecolor="white", linewidth=0.3)
            # a wrong prediction keeps its class colour, ringed in black
            ax.scatter(x[mine & wrong], y[mine & wrong], s=40, color=colors[k], edgecolor="black", linewidth=1.3,
                       zorder=3)
    if wrong.any():
        ax.scatter([], [], s=40, color="white", edgecolor="black", linewidth=1.3, label=f"wrong ({int(wrong.sum())})")
    method = projection["method"].upper() if projection["method"] == "pca" else "t-SNE"
    axis = "component" if projection["method"] == "pca" else "t-SNE"
    variance = projection.get("explained_variance_ratio")
    xlabel, ylabel = f"{axis} 1", f"{axis} 2"
    if variance:
        xlabel += f" ({variance[0]:.0%} of variance)"
        ylabel += f" ({variance[1]:.0%} of variance)"
    ax.set(xlabel=xlabel, ylabel=ylabel,
           title=f"val_test in the model's feature space ({method}, {len(rows)} points)\n"
                 "colour: true class; black ring: predicted wrong")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), title="class", title_fontsize=8,
              markerscale=1.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _storyboard_rows(storyboard: dict[str, Any]) -> list[tuple[str, list[tuple[str, dict[str, Any]]], str]]:
    """(row label, [(thumbnail title, example)], note when the row is empty) for each
    outcome and then the confused pairs: one example per pair, the most confident
    confusion, titled with the pair and how often it is confused."""
    rows: list[tuple[str, list[tuple[str, dict[str, Any]]], str]] = []
    for category in CATEGORIES:
        entry = storyboard["categories"][category]
        shown = [(f"{e['label']} → {e['prediction']}\n{e['confidence']:.3f}", e) for e in entry["examples"]]
        rows.append((f"{category.replace('_', ' ')}\n({entry['count']})", shown, entry["reason"] or "none on val_test"))
    pairs = [(f"{' / '.join(p['classes'])}: {p['count']}×\n{p['examples'][0]['label']} → "
              f"{p['examples'][0]['prediction']} {p['examples'][0]['confidence']:.3f}", p["examples"][0])
             for p in storyboard["confused_pairs"] if p["examples"]]
    rows.append((f"confused\npairs ({len(storyboard['confused_pairs'])})", pairs, "no confusions on val_test"))
    return rows


def draw_storyboard(storyboard: dict[str, Any], images: dict[str, bytes], path: Path) -> None:
    """Images only: one row per outcome, its examples as thumbnails titled
    `label → prediction` and the calibrated confidence (three decimals: at two, the
    most confident examples all read 1.00), then a row of the most confused pairs."""
    rows = _storyboard_rows(storyboard)
    per_row = max([len(shown) for _, shown, _ in rows] + [1])
    # at least 5.5 inches wide: the title and a row's note need it when few examples are shown
    fig, axes = plt.subplots(len(rows), per_row, figsize=(max(5.5, 1.5 * per_row + 1.7), 1.9 * len(rows) + 0.3),
                             squeeze=False)
    for row, (label, shown, empty_note) in enumerate(rows):
        for column in range(per_row):
            ax = axes[row][column]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            ax.set_facecolor("none")  # so that a row's note runs on over the empty axes beside it
            if column < len(shown):
                title, example = shown[column]
                with Image.open(io.BytesIO(images[example["id"]])) as image:
                    pixels = np.asarray(image.convert("RGB"))
                ax.imshow(pixels, interpolation="nearest")
                ax.set_title(title, fontsize=8, color="black" if example["correct"] else "tab:red")
        axes[row][0].set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center", labelpad=8)
        if not shown:
            # wrapped to the row's width and left out of the layout: the row's axes are
            # empty, and tight_layout would otherwise give up on the whole figure
            note = axes[row][0].text(0.0, 0.5, textwrap.fill(empty_note, width=22 * per_row), fontsize=8,
                                     transform=axes[row][0].transAxes, va="center")
            note.set_in_layout(False)
    fig.suptitle("Storyboard on val_test\ntrue → predicted, calibrated confidence (red: wrong)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _cell(text: str, limit: int = 80) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def write_insights_report(
    layout: InsightsLayout,
    calibration_report: str,
    run_name: str,
    model: dict[str, Any],
    reference: dict[str, Any] | None,
    epoch_seconds: dict[str, Any] | None,
    projection: dict[str, Any],
    storyboard: dict[str, Any],
    texts: dict[str, str],
    storyboard_png: bool,
) -> Path:
    """The report page: the model against the reference, the compute estimate, the
    meaning map, the storyboard (with the texts of a text run) and a link to the
    calibration report (`calibration_report`, relative to the insights)."""
    lines = [f"# Run insights: {run_name}", "", "Everything here is on `val_test`.", ""]
    lines += _reference_section(model, reference) + _compute_section(epoch_seconds)
    lines += ["## Meaning map", "",
              f"![meaning map]({layout.meaning_map_png.name})", "",
              "Each point is a val_test row placed by a 2-D projection of the model's pooled features; "
              "nearby points look alike to the model. Other projections: `meaning_map(run, method='tsne')`.", "",
              "## Storyboard", ""]
    if storyboard_png:
        lines += [f"![storyboard]({layout.storyboard_png.name})", ""]
    lines += _outcome_sections(storyboard, texts) + _confused_pairs_section(storyboard, texts)
    lines += [f"Calibration plots: [{calibration_report}]({calibration_report}).", ""]
    layout.report.write_text("\n".join(lines))
    return layout.report


def _reference_section(model: dict[str, Any], reference: dict[str, Any] | None) -> list[str]:
    lines = ["## Is the deep model worth it?", ""]
    rows = [(f"this run ({model['description']})", f"{model['accuracy']:.4f}", f"{model['macro_f1']:.4f}")]
    if reference is not None:
        rows.append((f"linear reference: {reference['kind']}, C={reference['C']:g}",
                     f"{reference['val_test_accuracy']:.4f}", f"{reference['val_test_macro_f1']:.4f}"))
    lines += _table(("model", "val_test accuracy", "macro-F1"), rows) + [""]
    if reference is None:
        return [*lines, "The reference model is off (`insights.reference.enabled: false`).", ""]
    gap = model["accuracy"] - reference["val_test_accuracy"]
    return [*lines, f"The deep model is {abs(gap):.4f} {'above' if gap >= 0 else 'below'} the linear reference "
                    f"(fitted on the same {reference['train_rows']} train rows, C chosen on val_select).", ""]


def _compute_section(epoch_seconds: dict[str, Any] | None) -> list[str]:
    lines = ["## Compute: estimate vs measured", ""]
    if not epoch_seconds:
        return [*lines, "No estimate was recorded for this run's training.", ""]
    measured = epoch_seconds.get("measured_median")
    return lines + _table(("epoch train time", "seconds"), [
        ("estimated before training (micro-benchmark)", f"{epoch_seconds['estimated']:.2f}"),
        ("measured, median of epochs after the first", "-" if measured is None else f"{measured:.2f}"),
        ("measured, first epoch (streams from Ray Data)", f"{epoch_seconds['measured_first']:.2f}"),
        ("measured / estimated", "-" if epoch_seconds.get("ratio") is None else f"{epoch_seconds['ratio']:.2f}"),
    ]) + [""]


def _outcome_sections(storyboard: dict[str, Any], texts: dict[str, str]) -> list[str]:
    lines: list[str] = []
    for category in CATEGORIES:
        entry = storyboard["categories"][category]
        lines += [f"### {category.replace('_', ' ')} ({entry['count']})", "", entry["description"] + ".", ""]
        if not entry["available"]:
            lines += [f"Not shown: {entry['reason']}.", ""]
            continue
        if not entry["examples"]:
            lines += ["None on val_test.", ""]
            continue
        header = ("id", "true", "predicted", "confidence", "decision") + (("text",) if texts else ())
        lines += _table(header, [
            (f"`{e['id']}`", e["label"], e["prediction"], f"{e['confidence']:.3f}", e["decision"])
            + ((_cell(texts.get(e["id"], "")),) if texts else ())
            for e in entry["examples"]
        ]) + [""]
    return lines


def _confused_pairs_section(storyboard: dict[str, Any], texts: dict[str, str]) -> list[str]:
    lines = ["### most confused class pairs", ""]
    if not storyboard["confused_pairs"]:
        return [*lines, "No confusions on val_test.", ""]
    lines += _table(("classes", "confusions", "by direction"), [
        (" / ".join(p["classes"]), str(p["count"]),
         ", ".join(f"{d['label']} as {d['prediction']}: {d['count']}" for d in p["directions"]))
        for p in storyboard["confused_pairs"]
    ]) + ["", "Their examples, most confident confusion first:", ""]
    # the examples in full, as for the outcomes above: an id alone says nothing in a text run
    return lines + _table(("pair", "id", "true", "predicted", "confidence", "decision") + (("text",) if texts else ()), [
        (" / ".join(p["classes"]), f"`{e['id']}`", e["label"], e["prediction"], f"{e['confidence']:.3f}",
         e["decision"]) + ((_cell(texts.get(e["id"], "")),) if texts else ())
        for p in storyboard["confused_pairs"] for e in p["examples"]
    ]) + [""]
