"""Worker placement: GPUs found by nvidia-smi, round robin over them, CPU cores shared evenly."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import types
from collections import Counter

import pytest

from pyserve.engine.placement import Placement, PlacementError, WorkerPlacement, visible_gpus
from pyserve.worker.pinning import apply_in_worker

TWO_GPUS = "0, GPU-aaaa1111\n1, GPU-bbbb2222\n"
FOUR_GPUS = TWO_GPUS + "2, GPU-cccc3333\n3, GPU-dddd4444\n"


def fake_nvidia_smi(tmp_path, output: str = FOUR_GPUS, exit_code: int = 0, **extra) -> dict[str, str]:
    """An environ whose PATH finds an nvidia-smi script that prints `output`."""
    script = tmp_path / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\nexit {exit_code}\n")
    script.chmod(0o755)
    return {"PATH": f"{tmp_path}:/usr/bin:/bin", **extra}


def test_no_nvidia_smi_means_no_gpus(tmp_path):
    assert visible_gpus(None, {"PATH": str(tmp_path)}) == []


def test_failing_nvidia_smi_means_no_gpus(tmp_path):
    assert visible_gpus(None, fake_nvidia_smi(tmp_path, "NVIDIA-SMI has failed\n", exit_code=9)) == []


def test_gpus_are_listed_by_nvidia_smi(tmp_path):
    assert visible_gpus(None, fake_nvidia_smi(tmp_path)) == ["0", "1", "2", "3"]


def test_cuda_visible_devices_restricts_and_orders_the_gpus(tmp_path):
    environ = fake_nvidia_smi(tmp_path, CUDA_VISIBLE_DEVICES="3,GPU-bbbb2222, GPU-aaaa")
    assert visible_gpus(None, environ) == ["3", "1", "0"]


def test_cuda_visible_devices_stops_at_an_unknown_gpu_like_cuda(tmp_path):
    assert visible_gpus(None, fake_nvidia_smi(tmp_path, CUDA_VISIBLE_DEVICES="2,7,0")) == ["2"]


def test_empty_cuda_visible_devices_means_no_gpus(tmp_path):
    assert visible_gpus(None, fake_nvidia_smi(tmp_path, CUDA_VISIBLE_DEVICES="")) == []


def test_number_of_gpu_caps_the_list(tmp_path):
    environ = fake_nvidia_smi(tmp_path)
    assert visible_gpus(2, environ) == ["0", "1"]
    assert visible_gpus(0, environ) == []


def test_workers_of_all_models_share_one_round_robin():
    placement = Placement(["0", "1", "2"], cpus=[0, 1])
    gpus = [placement.assign(model, None, None).physical_gpu for model in ("a", "b", "a", "b")]
    assert gpus == ["0", "1", "2", "0"]


def test_device_ids_use_their_own_round_robin():
    placement = Placement(["0", "1", "2", "3"], cpus=[0, 1])
    assert placement.assign("shared", None, None).physical_gpu == "0"
    own = [placement.assign("pinned", "gpu", [3, 1]).physical_gpu for _ in range(3)]
    assert own == ["3", "1", "3"]
    assert placement.assign("shared", None, None).physical_gpu == "1"


def test_device_ids_outside_the_visible_gpus_are_refused():
    with pytest.raises(PlacementError, match="deviceIds"):
        Placement(["0", "1"], cpus=[0]).assign("m", "gpu", [5])


def test_gpu_worker_sees_one_device_as_cuda_0():
    worker = Placement(["4", "6"], cpus=[0]).assign("m", None, None)
    assert (worker.gpu_id, worker.physical_gpu) == (0, "4")
    assert worker.environment() == {"CUDA_VISIBLE_DEVICES": "4", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def test_device_type_cpu_gets_no_gpu_and_hides_them():
    worker = Placement(["0", "1"], cpus=[0, 1]).assign("m", "cpu", None)
    assert worker.gpu_id is None and worker.physical_gpu is None
    assert worker.environment()["CUDA_VISIBLE_DEVICES"] == ""


def test_cpu_host_leaves_cuda_visible_devices_alone():
    worker = Placement([], cpus=[0, 1]).assign("m", None, None)
    assert worker.gpu_id is None and "CUDA_VISIBLE_DEVICES" not in worker.environment()


def test_gpu_required_without_gpus_is_refused_clearly():
    with pytest.raises(PlacementError, match="model resnet.*no GPU is visible"):
        Placement([], cpus=[0, 1]).assign("resnet", "gpu", None)


def test_first_cpu_worker_gets_every_core():
    assert Placement([], cpus=[0, 1, 2, 3]).assign("m", None, None).cpus == (0, 1, 2, 3)


def test_cpu_workers_spread_over_cores():
    placement = Placement([], cpus=[0, 1, 2, 3])
    workers = [placement.assign(model, None, None) for model in ("a", "b", "a", "b")]
    assert [w.cpus for w in workers] == [(0, 1, 2, 3), (0, 1), (2,), (3,)]
    assert Counter(core for w in workers for core in w.cpus) == {0: 2, 1: 2, 2: 2, 3: 2}


def test_more_cpu_workers_than_cores_get_one_core_each():
    placement = Placement([], cpus=[0, 1])
    workers = [placement.assign("m", None, None) for _ in range(5)]
    assert all(len(w.cpus) == 1 for w in workers[1:])
    assert Counter(core for w in workers for core in w.cpus) == {0: 3, 1: 3}


def test_threads_match_the_cores_given():
    placement = Placement([], cpus=range(8))
    for _ in range(4):
        worker = placement.assign("m", None, None)
        assert worker.threads == len(worker.cpus)


def test_released_cores_are_reused():
    placement = Placement([], cpus=[0, 1, 2, 3])
    workers = [placement.assign("m", None, None) for _ in range(4)]
    placement.release(workers[2])
    assert placement.assign("m", None, None).cpus == workers[2].cpus


def test_released_gpu_workers_leave_the_cores_alone():
    placement = Placement(["0"], cpus=[0, 1])
    placement.release(placement.assign("gpu-model", None, None))
    assert placement.assign("cpu-model", "cpu", None).cpus == (0, 1)


def test_environment_sets_thread_counts_for_cpu_workers():
    worker = WorkerPlacement(gpu_id=None, physical_gpu=None, cuda_visible_devices=None, cpus=(2, 3), threads=2)
    assert worker.environment() == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}


def test_apply_in_worker_pins_the_process():
    core = min(os.sched_getaffinity(0))
    child = subprocess.run(
        [sys.executable, "-P", "-c", textwrap.dedent(f"""
            import os
            from pyserve.worker.pinning import apply_in_worker
            apply_in_worker(({core},), 1)
            print(sorted(os.sched_getaffinity(0)))
        """)],
        capture_output=True, text=True, check=True)
    assert child.stdout.strip() == f"[{core}]"


def test_apply_in_worker_does_not_import_torch():
    child = subprocess.run(
        [sys.executable, "-P", "-c", textwrap.dedent("""
            import sys
            from pyserve.worker.pinning import apply_in_worker
            apply_in_worker((), 2)
            print("torch" in sys.modules)
        """)],
        capture_output=True, text=True, check=True)
    assert child.stdout.strip() == "False"


def test_apply_in_worker_sets_torch_threads_when_torch_is_loaded(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(set_num_threads=calls.append))
    apply_in_worker((), 3)
    assert calls == [3]


def test_apply_in_worker_warns_when_cores_are_not_allowed(caplog):
    before = os.sched_getaffinity(0)
    with caplog.at_level(logging.WARNING, logger="pyserve.worker"):
        apply_in_worker((100_000,), 0)
    assert os.sched_getaffinity(0) == before
    assert "could not pin the worker" in caplog.text


def test_workers_started_together_share_the_cores_from_the_start():
    placement = Placement([], cpus=[0, 1, 2, 3])
    first = placement.assign("m:1", None, None, starting=2)
    second = placement.assign("m:1", None, None, starting=1)
    assert (first.cpus, second.cpus) == ((0, 1), (2, 3))
    assert first.threads == second.threads == 2
