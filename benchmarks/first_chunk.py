"""Time to the first chunk of a streaming handler, against the time to its whole answer.

The handler (tests/handlers/streaming.py with body b"slow") sends a part, sleeps a second,
twice more, then returns: the first chunk should reach the client in about a plain
request's round trip, not after the handler's 3 s.

    python benchmarks/first_chunk.py --requests 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

import servers

HANDLER = Path(__file__).resolve().parent.parent / "tests" / "handlers" / "streaming.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pyserve-first-chunk-") as temporary:
        work = Path(temporary)
        store = work / "store"
        store.mkdir()
        subprocess.run(["torch-model-archiver", "--model-name", "stream", "--version", "1.0",
                        "--handler", str(HANDLER), "--export-path", str(store)], check=True)
        server, started = servers.start_pyserve(work, store, ["stream=stream.mar"])
        try:
            server.wait_first_prediction(started, "stream", b"42", "application/octet-stream")
            first, whole, plain = [], [], []
            with httpx.Client(timeout=30) as client:  # one connection, as a streaming client keeps
                for _ in range(args.requests):
                    began = time.perf_counter()
                    client.post(server.url("stream"), content=b"42")  # parts sent back to back
                    plain.append(time.perf_counter() - began)
                    began = time.perf_counter()
                    with client.stream("POST", server.url("stream"), content=b"slow") as answer:
                        for index, _chunk in enumerate(answer.iter_raw()):
                            if index == 0:
                                first.append(time.perf_counter() - began)
                    whole.append(time.perf_counter() - began)
            print(f"slow stream: first chunk median {statistics.median(first) * 1000:.1f} ms "
                  f"(max {max(first) * 1000:.1f}), whole answer {statistics.median(whole):.2f} s; "
                  f"a fast stream's whole answer {statistics.median(plain) * 1000:.1f} ms "
                  f"({args.requests} requests each)")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
