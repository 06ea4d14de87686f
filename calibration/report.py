"""Calibration report: reliability diagrams before / after temperature scaling with the
sample count of every bin, confidence per decision, a risk-coverage curve with the
policy's operating point, the guardrail sweep as a heat map, and a Markdown page tying
them to the numbers.

Every plot is drawn from the JSON views of `calibration.views`, the same data a
dashboard draws, so the report and the dashboard cannot disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

DECISION_COLORS = {"accept": "tab:green", "assist": "tab:orange", "abstain": "tab:red"}
# fixed per rule (not the colour cycle): the views come back from JSON with sorted keys,
# and a redrawn plot should colour each rule as the first drawing did
RULE_COLORS = {"threshold": "tab:purple", "guardrail (accepted)": "tab:orange", "risk control": "tab:green"}
PLOTS = {
    "reliability": "reliability.png",
    "decision_histogram": "confidence_by_decision.png",
    "risk_coverage": "risk_coverage.png",
    "guardrail": "guardrail_heatmap.png",
}


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reliability_diagram(view: dict[str, Any], path: Path, min_bin_count: int) -> None:
    """Per panel (before / after T): per-bin accuracy against confidence over a bar
    chart of how many samples each bin holds. Bins under `min_bin_count` samples are
    drawn hatched and pale: their accuracy is noise, not miscalibration."""
    fig, axes = plt.subplots(
        2, 2, figsize=(9.5, 6.0), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]}, squeeze=False
    )
    panels = (("before (T = 1)", view["before"]), ("after temperature", view["after"]))
    for column, (title, panel) in enumerate(panels):
        top, bottom = axes[0][column], axes[1][column]
        bins = panel["bins"]
        lows = np.array([b["low"] for b in bins])
        width = bins[0]["high"] - bins[0]["low"]
        counts = np.array([b["count"] for b in bins])
        for b in bins:
            if b["count"] == 0:
                continue
            small = b["small"]
            top.bar(b["low"], b["accuracy"], width=width, align="edge", edgecolor="black",
                    color="tab:blue", alpha=0.25 if small else 0.7, hatch="//" if small else None)
        top.plot([0, 1], [0, 1], "k--", linewidth=1)
        filled = [b for b in bins if b["count"] > 0]
        top.scatter([b["confidence"] for b in filled], [b["accuracy"] for b in filled],
                    color="tab:red", s=14, zorder=3)
        top.set(title=f"{title}, n = {panel['n']}", xlim=(0, 1), ylim=(0, 1.02))
        bottom.bar(lows, counts, width=width, align="edge", edgecolor="black",
                   color=["lightgrey" if b["small"] else "tab:blue" for b in bins])
        for low, count in zip(lows, counts, strict=True):
            if count:
                bottom.annotate(str(count), (low + width / 2, count), ha="center", va="bottom",
                                fontsize=7, xytext=(0, 1), textcoords="offset points")
        bottom.set(xlabel="confidence (top label)", xlim=(0, 1), ylim=(0, max(1, counts.max()) * 1.3))
    axes[0][0].set_ylabel("accuracy in bin")
    axes[1][0].set_ylabel("samples")
    handles = [
        Patch(facecolor="tab:blue", alpha=0.7, edgecolor="black", label="accuracy"),
        Patch(facecolor="tab:blue", alpha=0.25, hatch="//", edgecolor="black",
              label=f"fewer than {min_bin_count} samples: not evidence"),
        plt.Line2D([], [], color="k", linestyle="--", label="perfect calibration"),
        plt.Line2D([], [], color="tab:red", marker="o", linestyle="", label="(mean confidence, accuracy)"),
    ]
    fig.suptitle("Reliability on val_calib (equal-width bins; counts below)", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    _save(fig, path)


def decision_histogram(view: dict[str, Any], path: Path) -> None:
    """Calibrated confidence, stacked by the decision the policy takes, with its cuts.
    The legend sits right of the axes: the bars can fill any part of the range."""
    fig, ax = plt.subplots(figsize=(7.6, 3.8))
    edges = np.array(view["edges"])
    width = edges[1] - edges[0]
    bottom = np.zeros(len(edges) - 1)
    # in a fixed order, by name: views read back from JSON come with their keys sorted
    for decision in [d for d in DECISION_COLORS if d in view["counts"]]:
        values = np.array(view["counts"][decision])
        ax.bar(edges[:-1], values, width=width, bottom=bottom, align="edge", edgecolor="black", linewidth=0.5,
               color=DECISION_COLORS[decision], label=f"{decision} ({view['totals'][decision]})")
        bottom += values
    cuts = view["cuts"]
    if len(cuts) == 2 and cuts["assist_from"] == cuts["accept_from"]:
        # a band of width 0: one line, or the dotted one would hide under the dashed
        ax.axvline(cuts["accept_from"], color="black", linestyle="--", linewidth=1.2,
                   label=f"accept from {cuts['accept_from']:.3f}\n(band width 0: no assist)")
    else:
        for name, style in (("assist_from", ":"), ("accept_from", "--")):
            if name in cuts:
                ax.axvline(cuts[name], color="black", linestyle=style, linewidth=1.2,
                           label=f"{name.replace('_', ' ')} {cuts[name]:.3f}")
    ax.set(xlabel="calibrated confidence", ylabel="samples", xlim=(0, 1),
           title=f"Confidence by decision on val_calib (policy {view['rule']})")
    ax.set_ylim(0, max(1.0, bottom.max()) * 1.1)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    _save(fig, path)


def risk_coverage_curve(view: dict[str, Any], path: Path) -> None:
    """Selective risk against coverage over all thresholds, every rule's point, and the
    policy's operating point as a star. The rules' points are drawn over the star (the
    policy is one of them, at the same place) and the legend goes under the axes:
    at low coverage the curve can reach the top of the plot anywhere."""
    fig, ax = plt.subplots(figsize=(6.2, 5.0))
    curve = [p for p in view["curve"] if p["selective_risk"] is not None]
    ax.plot([p["coverage"] for p in curve], [p["selective_risk"] for p in curve], color="tab:blue",
            label="accept at confidence >= tau, every tau")
    chosen = view["chosen"]
    if chosen["selective_risk"] is not None:
        ax.scatter([chosen["coverage"]], [chosen["selective_risk"]], marker="*", s=320, color="gold",
                   edgecolor="black", zorder=3, label=f"policy ({chosen['rule']})")
        ax.annotate(f"coverage {chosen['coverage']:.2f}\nrisk {chosen['selective_risk']:.3f}",
                    (chosen["coverage"], chosen["selective_risk"]), xytext=(-70, 18),
                    textcoords="offset points", fontsize=8, arrowprops={"arrowstyle": "->", "lw": 0.8})
    for name, point in view["rules"].items():
        ax.scatter([point["coverage"]], [point["selective_risk"]], s=30, zorder=4, edgecolor="black",
                   linewidth=0.6, label=name, color=RULE_COLORS.get(name, "tab:gray"))
    ax.set(xlabel="coverage (share accepted)", ylabel="selective risk (errors among accepted)",
           xlim=(0, 1.02), title="Risk-coverage on val_calib")
    ax.set_ylim(bottom=0, top=max([p["selective_risk"] for p in curve] + [0.05]) * 1.15)
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
    fig.tight_layout()
    _save(fig, path)


def guardrail_heatmap(view: dict[str, Any], path: Path) -> None:
    """Accepted accuracy over the sweep's (center, width) grid. Infeasible cells (too
    much assist or too little coverage) are hatched grey with their value in
    parentheses; the chosen band is outlined."""
    centers, widths, cells = view["centers"], view["widths"], view["cells"]
    values = np.array([[np.nan if c is None or c["accepted_accuracy"] is None else c["accepted_accuracy"]
                        for c in line] for line in cells])
    feasible = np.array([[c is not None and c["feasible"] for c in line] for line in cells])
    fig, ax = plt.subplots(figsize=(1.2 * len(widths) + 3.0, 0.45 * len(centers) + 2.0))
    shown = np.where(feasible, values, np.nan)
    finite = values[np.isfinite(values)]
    low = float(finite.min()) if finite.size else 0.0
    image = ax.imshow(shown, cmap="viridis", vmin=low, vmax=1.0, aspect="auto", origin="lower")
    for i in range(len(centers)):
        for j in range(len(widths)):
            cell = cells[i][j]
            if cell is None:
                continue
            value = cell["accepted_accuracy"]
            text = "-" if value is None else f"{value:.3f}"
            if not cell["feasible"]:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="0.93", hatch="//",
                                       edgecolor="0.78", linewidth=0))
                text = f"({text})"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="0.35" if not cell["feasible"] else ("white" if (value or 0) < (low + 1) / 2 else "black"))
            if cell["chosen"]:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
    ax.set_xticks(range(len(widths)), [f"{w:g}" for w in widths])
    ax.set_yticks(range(len(centers)), [f"{c:g}" for c in centers])
    ax.set(xlabel="band width w", ylabel="band center c")
    chosen = view["chosen"]
    note = "no feasible band" if chosen is None else (
        f"chosen c={chosen['center']:g}, w={chosen['width']:g} (red)" + ("" if view["chosen_is_policy"] else ", not the policy"))
    ax.set_title(f"Guardrail sweep on val_calib: accepted accuracy\n{note}; hatched = infeasible", fontsize=10)
    fig.colorbar(image, ax=ax, label="accepted accuracy (feasible bands)")
    fig.tight_layout()
    _save(fig, path)


def draw_views(views: dict[str, Any], directory: Path) -> dict[str, str]:
    """Every plot of `calibration.views.build_views` into `directory`; returns
    {view: file name} for the plots drawn (no guardrail plot when it did not run)."""
    reliability_diagram(views["reliability"], directory / PLOTS["reliability"], views["min_bin_count"])
    decision_histogram(views["decision_histogram"], directory / PLOTS["decision_histogram"])
    risk_coverage_curve(views["risk_coverage"], directory / PLOTS["risk_coverage"])
    drawn = {k: PLOTS[k] for k in ("reliability", "decision_histogram", "risk_coverage")}
    if views["guardrail"] is not None:
        guardrail_heatmap(views["guardrail"], directory / PLOTS["guardrail"])
        drawn["guardrail"] = PLOTS["guardrail"]
    return drawn


def _table(rows: list[tuple[str, ...]]) -> str:
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def write_report(path: Path, results: dict[str, Any], plots: dict[str, str] | None = None) -> Path:
    """The calibration report (markdown) at `path`; `plots` ({view: file name beside it},
    from `draw_views`) are embedded where they belong."""
    plots = plots or {}
    temp = results["temperature"]
    before, after = temp["before"], temp["after"]

    def image(view: str, alt: str) -> list[str]:
        return [f"![{alt}]({plots[view]})", ""] if view in plots else []

    lines = [
        f"# Calibration report: {results['run']}",
        "",
        f"Fitted on `val_calib` only ({results['n_calib']} samples). Policy: **{results['policy']['rule']}**.",
        "",
        "## Temperature scaling",
        "",
        f"T = {temp['temperature']:.4f}" + ("" if temp["enabled"] else " (disabled)"),
        "",
        _table([("metric", "before", "after")] + [(k, f"{before[k]:.4f}", f"{after[k]:.4f}") for k in ("nll", "ece", "mce", "brier", "accuracy")]),
        "",
        *image("reliability", "reliability"),
        "The bars under each panel count the samples in each bin: a hatched bin holds too "
        "few samples for its accuracy to mean anything.",
        "",
        "## Decision rules",
        "",
    ]
    if results.get("threshold"):
        t = results["threshold"]
        lines += [f"- **threshold** ({t['objective']}, coverage >= {t['min_coverage']}): tau = {t['threshold']:.4f}, "
                  f"coverage {t['coverage']:.3f}, accepted accuracy {t['accepted_accuracy']:.4f}"]
    if results.get("guardrail"):
        g = results["guardrail"]
        lines += [f"- **guardrail** (Ray Tune, {g['trials']} trials): center {g['center']:.3f}, width {g['width']:.3f}, "
                  f"coverage {g['coverage']:.3f}, assist {g['assist_rate']:.3f}, accepted accuracy "
                  f"{g['accepted_accuracy']:.4f}" + ("" if g["feasible"] else " — no band met the constraints")]
    if results.get("risk_control"):
        r = results["risk_control"]
        lines += [f"- **risk control** (alpha {r['alpha']}, delta {r['delta']}): {r['message']}"]
    lines += ["", *image("risk_coverage", "risk-coverage"), *image("decision_histogram", "confidence by decision"),
              *image("guardrail", "guardrail sweep")]
    path.write_text("\n".join(lines))
    return path
