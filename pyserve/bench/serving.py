"""`pyserve bench model.mar`: serve the archive with a pyserve of its own for the run."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from pyserve import archive
from pyserve.control import free_ports, spawn_server


@contextlib.contextmanager
def served(archive_path: Path, workers: int | None = None) -> Iterator[str]:
    """Starts pyserve with the archive on free loopback ports; yields its predictions URL."""
    name = archive.default_model_name(archive_path.name)
    with tempfile.TemporaryDirectory(prefix="pyserve-bench-") as work:
        store = Path(work) / "store"
        store.mkdir()
        (store / archive_path.name).symlink_to(archive_path.resolve())
        inference, management, metrics = free_ports(3)
        config = Path(work) / "config.properties"
        lines = [f"inference_address=http://127.0.0.1:{inference}",
                 f"management_address=http://127.0.0.1:{management}",
                 f"metrics_address=http://127.0.0.1:{metrics}",
                 "disable_token_authorization=true"]
        if workers:
            lines.append(f"default_workers_per_model={workers}")
        config.write_text("\n".join(lines) + "\n")
        with open(Path(work) / "pyserve.log", "wb") as log:
            process, report = spawn_server(
                ["--model-store", str(store), "--models", f"{name}={archive_path.name}",
                 "--ts-config", str(config)],
                log=log, env=dict(os.environ, TMPDIR=work), cwd=work)
        try:
            if not report.startswith("ready") or "cannot load" in report:
                log_text = (Path(work) / "pyserve.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"pyserve could not serve {archive_path}: {report}\n{log_text}")
            yield f"http://127.0.0.1:{inference}/predictions/{name}"
        finally:
            process.terminate()
            process.wait(60)
