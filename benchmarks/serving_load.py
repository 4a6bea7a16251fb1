"""Load test of the serving path: concurrent REST and gRPC clients against the stand-ins.

Starts the test stand-ins (`tests/serving_stub.py`: `ServingStub` for REST,
`GrpcServingStub` for gRPC, both on 127.0.0.1 over the same loaded
SavedModels, each with `--server-threads` worker threads) and, for each model
and transport, runs `--clients` client threads for `--seconds` seconds. Each
client holds its own `apps.common.serving.connect` client and sends one
request after another (medical_cnn: one encoded PNG; translator: one
sentence). Reported per run: requests/s, p50/p95/p99 latency of the
successful requests, and the errors counted by `ServingError` class.

Then an overload run per transport: `--overload-clients` clients (more than
the server has threads) for half as long. The whole benchmark takes about a
minute (under two on a busy 2-CPU machine). The servers refuse calls beyond
their threads (REST 503, gRPC RESOURCE_EXHAUSTED), clients do not retry and
give up after `--timeout`: every failure must be a counted `ServingError`,
and every client thread must have finished when the run ends (`hung` = 0).

    python benchmarks/serving_load.py [--medical saved_models/medical_cnn]
        [--translator saved_models/translator] [--clients 4] [--seconds 5]

Without `--medical`, an untrained model of the `default` medical_cnn preset
is exported to a temporary folder (weights do not change the latency).
Results are printed and written as JSON (default
`benchmarks/results/serving_load.json`) with `machine_info()`.

What it measures: the project's clients, the transports and the stand-ins'
queueing on this machine, around the real exported graphs. The stand-ins run
one model call at a time (as the test servers always have), so the figures
are not TF Serving's throughput; they show what the clients cost, how REST and
gRPC compare, and that overload fails cleanly.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from apps.common.io import atomic_write_json  # noqa: E402
from apps.common.machine import describe_machine, machine_info  # noqa: E402
from apps.common.serving import ServingError, connect, encode_b64  # noqa: E402

# The stand-ins are test code (no real model server is installable here); the
# load test runs against them on purpose, as the tests do.
from tests.serving_stub import GrpcServingStub, ModelStore, ServingStub  # noqa: E402

SENTENCES = ["Hello.", "How are you?", "Why don't we take a taxi?", "The book is on the table."]


def _untrained_medical_export(folder: Path) -> Path:
    """Exports an untrained `default` medical_cnn model to `folder/medical_cnn`."""
    from apps.common.config import save_config
    from apps.medical_cnn.config import get_config
    from apps.medical_cnn.export import export
    from apps.medical_cnn.model import build_model

    run = folder / "run"
    run.mkdir(parents=True)
    config = get_config("default")
    size = config.input_size
    config = dataclasses.replace(  # What training derives from PneumoniaMNIST, roughly.
        config,
        input_shape=(size, size, 1),
        num_classes=2,
        pixel_mean=(146.0,),
        pixel_variance=(4000.0,),
    )
    build_model(config).save(run / "model.keras")
    save_config(config, run / "config.json")
    base = folder / "medical_cnn"
    export(run, base)
    return base


def _medical_instances() -> list:
    import tensorflow as tf

    ramp = np.linspace(0, 255, 28 * 28, dtype=np.float32).reshape(28, 28, 1).astype(np.uint8)
    return [{"image_bytes": encode_b64(tf.io.encode_png(ramp).numpy())}]


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 2) if values else None


def run_load(url, model, instances, clients, seconds, timeout) -> dict:
    """`clients` threads send `instances` to `url` for `seconds`; returns the figures."""
    latencies: list[float] = []
    errors: Counter = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client_loop():
        try:
            client = connect(url, model, timeout=timeout, retries=0)
        except ServingError as e:  # pragma: no cover - bad arguments are a bug here
            with lock:
                errors[type(e).__name__] += 1
            return
        while time.monotonic() < deadline:
            start = time.monotonic()
            try:
                client.predict(instances)
            except ServingError as e:
                with lock:
                    errors[type(e).__name__] += 1
                time.sleep(0.01)  # A refused client backs off a little, as real ones do.
                continue
            except Exception as e:  # Not a clean error: counted apart, and fails the run.
                with lock:
                    errors[f"unexpected {type(e).__name__}"] += 1
                continue
            elapsed = time.monotonic() - start
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:  # A request started before the deadline ends within `timeout`.
        thread.join(timeout=max(0.0, deadline - time.monotonic()) + timeout + 5.0)
    elapsed = time.monotonic() - start
    hung = sum(thread.is_alive() for thread in threads)
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "requests": len(latencies) + sum(errors.values()),
        "ok": len(latencies),
        "errors": sum(errors.values()),
        "errors_by_type": dict(errors),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": _percentile(latencies, 50),
        "p95_ms": _percentile(latencies, 95),
        "p99_ms": _percentile(latencies, 99),
        "hung": hung,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--medical", type=Path, default=None, help="medical_cnn base path")
    parser.add_argument("--translator", type=Path, default=None, help="translator base path")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients per run")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each load run")
    parser.add_argument(
        "--server-threads",
        type=int,
        default=8,
        help="stand-ins' worker threads (above --clients: a finished call holds its thread a "
        "moment after the client has its answer)",
    )
    parser.add_argument(
        "--overload-clients", type=int, default=32, help="clients of the overload runs"
    )
    parser.add_argument("--timeout", type=float, default=3.0, help="client timeout, seconds")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/serving_load.json")
    args = parser.parse_args(argv)
    if args.overload_clients <= args.server_threads:
        parser.error("--overload-clients must exceed --server-threads")

    started = time.monotonic()
    info = machine_info()
    print(f"machine: {describe_machine(info)}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        models, instances, sources = {}, {}, {}
        if args.medical is None:
            models["medical_cnn"] = _untrained_medical_export(Path(tmp))
            sources["medical_cnn"] = "untrained `default` preset, exported to a temporary folder"
        else:
            models["medical_cnn"] = args.medical
            sources["medical_cnn"] = str(args.medical)
        instances["medical_cnn"] = _medical_instances()
        if args.translator is not None:
            models["translator"] = args.translator
            sources["translator"] = str(args.translator)
            instances["translator"] = SENTENCES[:1]
        store = ModelStore(models)
        runs = []
        with (
            ServingStub(store=store, max_threads=args.server_threads) as rest,
            GrpcServingStub(store=store, max_threads=args.server_threads) as grpc_stub,
        ):
            urls = {"rest": rest.url, "grpc": grpc_stub.url}
            for name in models:
                for transport, url in urls.items():
                    connect(url, name, timeout=60).predict(instances[name])  # Warm (traced).
                    for kind, clients, seconds in (
                        ("load", args.clients, args.seconds),
                        ("overload", args.overload_clients, args.seconds / 2),
                    ):
                        result = run_load(
                            url, name, instances[name], clients, seconds, args.timeout
                        )
                        result.update(model=name, transport=transport, run=kind)
                        runs.append(result)
                        print(
                            f"{name:12s} {transport:5s} {kind:9s} clients={clients:3d} "
                            f"{result['requests_per_s']:7.1f} req/s  p50={result['p50_ms']} "
                            f"p95={result['p95_ms']} p99={result['p99_ms']} ms  "
                            f"errors={result['errors']} {result['errors_by_type']} "
                            f"hung={result['hung']}",
                            flush=True,
                        )
    total = round(time.monotonic() - started, 1)
    info["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    report = {
        "benchmark": "serving_load",
        "command": "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:]),
        "machine": info,
        "models": sources,
        "config": {
            "clients": args.clients,
            "seconds": args.seconds,
            "server_threads": args.server_threads,
            "overload_clients": args.overload_clients,
            "timeout": args.timeout,
            "retries": 0,
        },
        "runs": runs,
        "total_seconds": total,
    }
    atomic_write_json(args.out, report)
    print(f"total {total} s; wrote {args.out}")
    # Overload may fail requests, but only cleanly (ServingError), and no client may hang.
    failed = [
        r for r in runs if r["hung"] or any(k.startswith("unexpected") for k in r["errors_by_type"])
    ]
    if failed:
        print(f"FAILED: hung or unexpected errors in {len(failed)} runs")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
