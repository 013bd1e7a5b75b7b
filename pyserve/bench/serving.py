"""`pyserve bench model.mar`: serve the archive with a pyserve of its own for the run."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from pyserve import archive
from pyserve.control import listening_ports, spawn_server, stop_process, write_loopback_config


@contextlib.contextmanager
def served(archive_path: Path, workers: int | None = None) -> Iterator[str]:
    """Starts pyserve with the archive on loopback port 0; yields its predictions URL."""
    name = archive.default_model_name(archive_path.name)
    with tempfile.TemporaryDirectory(prefix="pyserve-bench-") as work:
        store = Path(work) / "store"
        store.mkdir()
        (store / archive_path.name).symlink_to(archive_path.resolve())
        config = Path(work) / "config.properties"
        extra = {"default_workers_per_model": workers} if workers else {}
        write_loopback_config(config, **extra)
        with open(Path(work) / "pyserve.log", "wb") as log:
            process, report = spawn_server(
                ["--model-store", str(store), "--models", f"{name}={archive_path.name}",
                 "--ts-config", str(config)],
                log=log, env=dict(os.environ, TMPDIR=work), cwd=work)
        try:
            if not report.startswith("ready") or "cannot load" in report:
                log_text = (Path(work) / "pyserve.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"pyserve could not serve {archive_path}: {report}\n{log_text}")
            inference = listening_ports(report)["inference"]
            yield f"http://127.0.0.1:{inference}/predictions/{name}"
        finally:
            stop_process(process)
