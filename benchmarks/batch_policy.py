"""pyserve's batching policy against TorchServe's, on the batched MLP, side by side.

pyserve sends a batch to an idle worker at once; TorchServe's policy (model-config
`waitForFullBatch: true` in pyserve) waits until the batch is full or maxBatchDelay old.
Each model has its own pyserve (1 worker, batchSize 8, maxBatchDelay 5), both running, driven
in turns at 1, 4 and 64 connections; the table goes to docs/compatibility.md. One server
each, not two models in one: a server pins its first worker to the first core and its second
to the other, and on 2 cores that alone changes the MLP's rate twofold.

    python benchmarks/batch_policy.py --duration 5 --rounds 2
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import servers
from pyserve.bench.loadgen import build_request, json_floats, run_native
from pyserve.bench.report import merge



def build(store: Path) -> None:
    servers.build_archives(store)
    waiting = store / "wait.yaml"
    examples = Path(__file__).resolve().parent.parent / "examples" / "mlp"
    waiting.write_text((examples / "model-config.yaml").read_text() + "waitForFullBatch: true\n")
    subprocess.run(["torch-model-archiver", "--model-name", "mlp_wait", "--handler",
                    str(examples / "mlp_handler.py"), "--serialized-file", str(store / "mlp.pt"),
                    "--config-file", str(waiting), "--version", "1.0", "--export-path", str(store),
                    "--force"], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", default="1,4,64", help="comma-separated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pyserve-batch-policy-") as temporary:
        work = Path(temporary)
        store = work / "store"
        store.mkdir()
        build(store)
        running = {}
        body = json_floats(64)
        try:
            for model in ("mlp", "mlp_wait"):
                home = work / model
                home.mkdir()
                server, started = servers.start_pyserve(home, store, [f"{model}={model}.mar"])
                running[model] = server
                server.wait_first_prediction(started, model, body, "application/json")
            print(f"{'connections':>11}  {'policy':<28} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}")
            for connections in map(int, args.connections.split(",")):
                runs: dict[str, list] = {"mlp": [], "mlp_wait": []}
                for _ in range(args.rounds):
                    for model in runs:
                        url = running[model].url(model)
                        runs[model].append(run_native(url, build_request(url, body, "application/json"),
                                                      connections, args.duration, None, 1, 30.0))
                for model, label in (("mlp", "dispatch when idle (pyserve)"),
                                     ("mlp_wait", "wait for full batch (TS)")):
                    result = merge(runs[model])
                    print(f"{connections:>11}  {label:<28} {result.rate:>8.0f} "
                          f"{result.percentile(50):>7.2f} {result.percentile(99):>7.2f}")
        finally:
            for server in running.values():
                server.stop()


if __name__ == "__main__":
    main()
