"""Calibration report: reliability diagrams before / after temperature scaling, a
risk-coverage curve, and a Markdown page tying them to the numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from calibration.metrics import reliability_bins  # noqa: E402


def reliability_diagram(
    before: tuple[np.ndarray, np.ndarray], after: tuple[np.ndarray, np.ndarray], path: Path, n_bins: int = 15
) -> None:
    """Each panel: per-bin accuracy against mean confidence; the diagonal is perfect."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    for ax, (title, (confidence, correct)) in zip(axes, (("before (T = 1)", before), ("after temperature", after)), strict=True):
        bins = reliability_bins(confidence, correct, n_bins)
        filled = bins["count"] > 0
        ax.bar(edges[:-1][filled], bins["accuracy"][filled], width=1.0 / n_bins, align="edge",
               edgecolor="black", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        ax.scatter(bins["confidence"][filled], bins["accuracy"][filled], color="tab:red", s=12, zorder=3,
                   label="(mean confidence, accuracy)")
        ax.set(title=title, xlabel="confidence", xlim=(0, 1), ylim=(0, 1))
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def risk_coverage_curve(sweep: dict[str, np.ndarray], marks: dict[str, tuple[float, float]], path: Path) -> None:
    """Selective risk against coverage over all thresholds, with the chosen operating points."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    order = np.argsort(sweep["coverage"])
    ax.plot(sweep["coverage"][order], sweep["selective_risk"][order], color="tab:blue", label="thresholds")
    for name, (coverage, risk) in marks.items():
        ax.scatter([coverage], [risk], s=40, zorder=3, label=name)
    ax.set(xlabel="coverage (share accepted)", ylabel="selective risk (errors among accepted)",
           xlim=(0, 1.02), title="risk-coverage on val_calib")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(rows: list[tuple[str, ...]]) -> str:
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def write_report(directory: Path, results: dict[str, Any]) -> Path:
    temp = results["temperature"]
    before, after = temp["before"], temp["after"]
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
        "![reliability](reliability.png)",
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
    lines += ["", "![risk-coverage](risk_coverage.png)", ""]
    path = directory / "report.md"
    path.write_text("\n".join(lines))
    return path
