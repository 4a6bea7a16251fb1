"""Benchmark of the chest X-ray classifier: validation quality and training time over seeds.

Trains a preset (default: `default`) once per seed on PneumoniaMNIST train,
selects the threshold on val (Youden's J), and reports validation AUC,
accuracy, sensitivity and specificity at that threshold as mean ± std, with
the training time of each run and the machine's load average (other processes
share the CPU: timings are pessimistic when it is high).

`--compare-imbalance` also trains the other way of handling the class
imbalance (the preset uses balanced class weights with cross-entropy; the
alternative is class-balanced focal loss) on the same seeds, which is how the
preset's choice is checked.

Usage:
    python benchmarks/medical_cnn.py [--preset default] [--seeds 0 1 2] [--data PATH]
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
from apps.medical_cnn.train import train  # noqa: E402

MEASURES = ("auc", "accuracy", "sensitivity", "specificity")
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
    start = time.perf_counter()
    report = train(cfg, run_dir, verbose=0, tensorboard=False)
    at = report["at_threshold"] if "at_threshold" in report else report
    return {
        "seed": cfg.seed,
        "auc": report["auc"],
        "accuracy": at["accuracy"],
        "sensitivity": at.get("sensitivity"),
        "specificity": at.get("specificity"),
        "threshold": report.get("threshold"),
        "accuracy_at_0.5": report.get("at_0.5", {}).get("accuracy"),
        "train_seconds": report["train_seconds"],
        "wall_seconds": round(time.perf_counter() - start, 1),
        "epochs": report["epochs_run_this_call"],
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "run_dir": str(run_dir),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", default=None, help="pneumoniamnist.npz (default: shared data)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--compare-imbalance", action="store_true")
    parser.add_argument("--runs-root", default="runs/benchmarks/medical_cnn")
    parser.add_argument("--out", default="benchmarks/results/medical_cnn.json")
    args = parser.parse_args(argv)

    data = args.data or str(find_shared_data("pneumoniamnist/pneumoniamnist.npz"))
    base = apply_overrides(get_config(args.preset), data_path=data, epochs=args.epochs)
    variants = {"preset": {}}
    if args.compare_imbalance:
        # The preset is one of the two options; train the other one on the same seeds.
        for name, overrides in IMBALANCE_OPTIONS.items():
            if any(getattr(base, k) != v for k, v in overrides.items()):
                variants[name] = overrides
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "preset": args.preset,
        "config": dataclasses.asdict(base),
        "machine": machine_info(),
        "variants": {},
    }
    for name, overrides in variants.items():
        runs = []
        for seed in args.seeds:
            cfg = dataclasses.replace(base, seed=seed, **overrides)
            slug = name.replace("+", "_").replace("(", "_").replace(")", "").replace(" ", "_")
            run = run_one(cfg, Path(args.runs_root) / stamp / f"{slug}_seed{seed}")
            print(json.dumps({"variant": name, **run}), flush=True)
            runs.append(run)
        results["variants"][name] = {"runs": runs, "summary": _summary(runs)}
    for name, variant in results["variants"].items():
        s = variant["summary"]
        line = ", ".join(f"{m} {s[m]['mean']:.4f} ± {s[m]['std']:.4f}" for m in MEASURES)
        print(
            f"{name}: val {line}; train {s['train_seconds']['mean']:.0f} ± "
            f"{s['train_seconds']['std']:.0f} s"
        )
    print(f"machine: {describe_machine(results['machine'])}")
    atomic_write_json(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
