"""The servers benchmarks/compare.py puts side by side, started the way their users start them.

Each is timed from the command to its first successful prediction (cold start) and measured
from /proc: the frontend's resident memory once idle, the CPU time of its whole process tree
(frontends and workers), so that a run's server CPU per request can be set beside the load
client's, and that of its HTTP side alone (pyserve's server process with its core thread and
its frontend processes; TorchServe's JVM).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pyserve.control import free_ports, write_loopback_config
from pyserve.processes import alive, cpu_seconds, descendants, is_frontend_process

ROOT = Path(__file__).resolve().parent.parent
TORCHSERVE_VENV = ROOT / "benchmarks" / ".torchserve-venv"
START_TIMEOUT = 180


def build_archives(store: Path) -> None:
    """echo.mar and mlp.mar from examples/, made by torch-model-archiver as a user makes them."""
    examples = ROOT / "examples"
    subprocess.run([sys.executable, str(examples / "mlp" / "make_mlp.py"), str(store)],
                   check=True, capture_output=True)
    common = ["--version", "1.0", "--export-path", str(store), "--force"]
    subprocess.run(["torch-model-archiver", "--model-name", "echo", "--handler",
                    str(examples / "echo" / "echo_handler.py"), *common], check=True)
    subprocess.run(["torch-model-archiver", "--model-name", "mlp", "--handler",
                    str(examples / "mlp" / "mlp_handler.py"), "--serialized-file",
                    str(store / "mlp.pt"), "--config-file",
                    str(examples / "mlp" / "model-config.yaml"), *common], check=True)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def predicts(url: str, body: bytes, content_type: str) -> bool:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Server:
    """A running server under test."""

    name: str
    process: subprocess.Popen
    inference_port: int
    cold_start_seconds: float = float("nan")
    idle_rss_mib: float = float("nan")

    def url(self, model: str) -> str:
        return f"http://127.0.0.1:{self.inference_port}/predictions/{model}"

    def cpu_seconds(self) -> float:
        return cpu_seconds(descendants(self.process.pid))  # frontend and workers

    def http_cpu_seconds(self) -> float:
        """CPU of the processes that parse HTTP, and for pyserve its core thread too."""
        if self.name == "torchserve":
            return cpu_seconds([self.frontend()])
        frontends = [pid for pid in descendants(self.process.pid) if is_frontend_process(pid)]
        return cpu_seconds([self.process.pid, *frontends])

    def wait_first_prediction(self, started: float, model: str, body: bytes,
                              content_type: str) -> None:
        """Polls until the model answers 200; records the cold start and the idle RSS."""
        deadline = started + START_TIMEOUT
        while not predicts(self.url(model), body, content_type):
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.process.returncode}")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{self.name} did not answer within {START_TIMEOUT} s")
            time.sleep(0.01)
        self.cold_start_seconds = time.perf_counter() - started
        time.sleep(2)  # let start-up garbage settle before reading the idle footprint
        self.idle_rss_mib = rss_mib(self.frontend())

    def frontend(self) -> int:
        """The process that serves HTTP: TorchServe's is the JVM its Python launcher starts."""
        if self.name != "torchserve":
            return self.process.pid
        for pid in descendants(self.process.pid):
            try:
                with open(f"/proc/{pid}/comm") as comm:
                    if comm.read().strip() == "java":
                        return pid
            except OSError:
                continue
        return self.process.pid

    def stop(self) -> None:
        """Ends the whole tree: TorchServe's launcher can exit and leave its JVM behind."""
        tree = descendants(self.process.pid)
        for pid in tree:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(alive(pid) for pid in tree):
            time.sleep(0.1)
        for pid in tree:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()


def loopback_config(path: Path, **values: object) -> int:
    """control.write_loopback_config on ports picked here (a benchmark times its servers from
    the command on, by polling a known port); returns the inference port."""
    inference, management, metrics = free_ports(3)
    write_loopback_config(path, inference_address=f"http://127.0.0.1:{inference}",
                          management_address=f"http://127.0.0.1:{management}",
                          metrics_address=f"http://127.0.0.1:{metrics}", **values)
    return inference


def start_pyserve(work: Path, store: Path, models: list[str],
                  frontends: int = 1) -> tuple[Server, float]:
    """Started with Popen, not control.spawn_server: the cold start is timed by polling
    predictions, the same way for both servers, not by pyserve's own ready report."""
    name = "pyserve" if frontends == 1 else f"pyserve-{frontends}f"
    home = work / name
    home.mkdir()
    config = home / "config.properties"
    inference = loopback_config(config, default_workers_per_model=1, frontend_processes=frontends)
    started = time.perf_counter()
    with open(home / "pyserve.log", "wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [sys.executable, "-P", "-m", "pyserve", "start", "--foreground", "--model-store",
             str(store), "--ts-config", str(config), "--models", *models],
            stdout=log, stderr=subprocess.STDOUT, cwd=home, env=dict(os.environ, TMPDIR=str(home)))
    return Server(name, process, inference), started


def torchserve_installed() -> bool:
    return (TORCHSERVE_VENV / "bin" / "torchserve").exists() and shutil.which("java") is not None


def start_torchserve(work: Path, store: Path, models: list[str]) -> tuple[Server, float]:
    home = work / "torchserve"
    home.mkdir()
    config = home / "config.properties"
    inference = loopback_config(config, default_workers_per_model=1, install_py_dep_per_model="false")
    bin_dir = TORCHSERVE_VENV / "bin"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", LOG_LOCATION=str(home / "logs"),
               METRICS_LOCATION=str(home / "logs"), TEMP=str(home))
    env.pop("PYTHONPATH", None)
    started = time.perf_counter()
    with open(home / "torchserve.log", "wb") as log:
        process = subprocess.Popen(
            [str(bin_dir / "torchserve"), "--start", "--foreground", "--ncs", "--disable-token-auth",
             "--model-store", str(store), "--ts-config", str(config), "--models", *models],
            stdout=log, stderr=subprocess.STDOUT, cwd=home, env=env)
    return Server("torchserve", process, inference), started


def start_ceiling(work: Path) -> tuple[Server, float]:
    """A bare Starlette app that answers the body itself: no Python server can beat it."""
    (port,) = free_ports(1)
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "ceiling_app.py"),
                                str(port)], cwd=work)
    return Server("ceiling", process, port), started
