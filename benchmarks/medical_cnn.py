"""Benchmark of the chest X-ray classifier presets: quality, calibration and time over seeds.

Trains each preset (default: `default` and `best`) once per seed on
PneumoniaMNIST and reports AUC, accuracy, sensitivity and specificity at the
stored threshold, and the expected calibration error (ECE), as mean ± std,
with the training time of each run and the machine's load average (other
processes share the CPU: timings are pessimistic when it is high).

The figures are labelled with what they are measured on: a single-model
preset (`folds` = 1) on the validation split (524 images; its threshold was
chosen there too, so they are optimistic), a cross-validated preset on the
out-of-fold predictions over train + val (5,232 images; every image
predicted by a fold model that never saw it, threshold chosen on them).
Neither is the withheld test split.

`--compare-imbalance` also trains the other way of handling the class
imbalance (the preset uses balanced class weights with cross-entropy; the
alternative is class-balanced focal loss) on the same seeds, which is how the
preset's choice is checked.

Usage:
    python benchmarks/medical_cnn.py [--presets default best] [--seeds 0 1 2] [--data PATH]
        [--epochs N] [--compare-imbalance] [--out benchmarks/results/medical_cnn.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from apps.common.config import apply_overrides  # noqa: E402
from apps.common.data import find_shared_data  # noqa: E402
from apps.common.io import atomic_write_json  # noqa: E402
from apps.common.machine import describe_machine, machine_info  # noqa: E402
from apps.medical_cnn.config import get_config  # noqa: E402
from apps.medical_cnn.crossval import train_folds  # noqa: E402
from apps.medical_cnn.train import train  # noqa: E402

MEASURES = ("auc", "accuracy", "sensitivity", "specificity", "ece")
# The two ways of handling the class imbalance that --compare-imbalance puts side by side.
IMBALANCE_OPTIONS = {
    "class_weight+bce": {"loss": "bce", "imbalance": "class_weight"},
    "focal(balanced alpha)": {"loss": "focal", "imbalance": "none"},
}


def _summary(runs: list[dict]) -> dict:
    out = {}
    for name in (*MEASURES, "train_seconds"):
        values = [r[name] for r in runs]
        out[name] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values,
        }
    return out


def run_one(cfg, run_dir: Path) -> dict:
    """Trains `cfg` into `run_dir`, or reads the figures of a run finished there before."""
    start = time.perf_counter()
    if (run_dir / "metrics.json").is_file():
        report = json.loads((run_dir / "metrics.json").read_text())
    else:
        fit = train_folds if cfg.folds > 1 else train
        report = fit(cfg, run_dir, verbose=0, tensorboard=False)
    at = report["at_threshold"] if "at_threshold" in report else report
    return {
        "seed": cfg.seed,
        "measured_on": report["split"],
        "ece": report["ece"],
        "auc": report["auc"],
        "accuracy": at["accuracy"],
        "sensitivity": at.get("sensitivity"),
        "specificity": at.get("specificity"),
        "threshold": report.get("threshold"),
        "accuracy_at_0.5": report.get("at_0.5", {}).get("accuracy"),
        "train_seconds": report["train_seconds"],
        "wall_seconds": round(time.perf_counter() - start, 1),
        "epochs": report.get("epochs_run_this_call", cfg.epochs),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "run_dir": str(run_dir),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["default", "best"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", default=None, help="pneumoniamnist.npz (default: shared data)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--compare-imbalance", action="store_true")
    parser.add_argument(
        "--runs-root",
        default="runs/benchmarks/medical_cnn",
        help="run directories <preset>_seed<N> go here; finished ones are read, not retrained",
    )
    parser.add_argument("--out", default="benchmarks/results/medical_cnn.json")
    args = parser.parse_args(argv)

    data = args.data or str(find_shared_data("pneumoniamnist/pneumoniamnist.npz"))
    variants = {}
    for preset in args.presets:
        base = apply_overrides(get_config(preset), data_path=data, epochs=args.epochs)
        variants[preset] = (base, {})
        if args.compare_imbalance:
            # The preset is one of the two options; train the other one on the same seeds.
            for name, overrides in IMBALANCE_OPTIONS.items():
                if any(getattr(base, k) != v for k, v in overrides.items()):
                    variants[f"{preset} {name}"] = (base, overrides)
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "presets": args.presets,
        "configs": {p: dataclasses.asdict(variants[p][0]) for p in args.presets},
        "machine": machine_info(),
        "variants": {},
    }
    for name, (base, overrides) in variants.items():
        runs = []
        for seed in args.seeds:
            cfg = dataclasses.replace(base, seed=seed, **overrides)
            slug = name.replace("+", "_").replace("(", "_").replace(")", "").replace(" ", "_")
            # Stable names: rerunning the benchmark resumes it (finished runs are read back,
            # an interrupted one resumes; a cross-validated run skips its finished folds).
            run = run_one(cfg, Path(args.runs_root) / f"{slug}_seed{seed}")
            print(json.dumps({"variant": name, **run}), flush=True)
            runs.append(run)
        results["variants"][name] = {"runs": runs, "summary": _summary(runs)}
    for name, variant in results["variants"].items():
        s = variant["summary"]
        line = ", ".join(f"{m} {s[m]['mean']:.4f} ± {s[m]['std']:.4f}" for m in MEASURES)
        on = variant["runs"][0]["measured_on"]
        print(
            f"{name}: {on} {line}; train {s['train_seconds']['mean']:.0f} ± "
            f"{s['train_seconds']['std']:.0f} s"
        )
    print(f"machine: {describe_machine(results['machine'])}")
    atomic_write_json(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
