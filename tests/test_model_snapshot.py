"""TorchServe's model_snapshot in config.properties: the startup models, each version with its
archive and settings, as TorchServe writes it and KServe's TorchServe layout ships it."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from helpers import HANDLERS, archive_model, start_server
from pyserve.config import ConfigError
from pyserve.control import write_loopback_config
from pyserve.model_snapshot import SnapshotVersion, read_snapshot


def version(mar_name: str, default: bool = True, **settings: object) -> dict:
    """One version's entry, with TorchServe's required keys."""
    return {"defaultVersion": default, "marName": mar_name, "minWorkers": 1, "maxWorkers": 1,
            "batchSize": 1, "maxBatchDelay": 100, **settings}


def snapshot(models: dict, count: int | None = None) -> str:
    listed = {"name": "startup.cfg", "models": models}
    listed["modelCount"] = len(models) if count is None else count
    return json.dumps(listed)


@pytest.fixture(scope="module")
def probe_store(tmp_path_factory):
    """probe_a.mar (version 1.0) and probe_b.mar (version 2.0): both answer their version."""
    store = tmp_path_factory.mktemp("snapshot_store")
    archive_model(store, "probe_a", HANDLERS / "version_probe.py", version="1.0")
    archive_model(store, "probe_b", HANDLERS / "version_probe.py", version="2.0")
    return store


# -- reading a snapshot ---------------------------------------------------------------


def test_a_snapshot_lists_each_version_with_its_archive_and_settings(probe_store):
    text = snapshot({"probe": {"1.0": version("probe_a.mar", minWorkers=2, maxWorkers=4,
                                              batchSize=8, maxBatchDelay=50,
                                              responseTimeout=60)}})
    assert read_snapshot(text, str(probe_store)) == [SnapshotVersion(
        name="probe", mar_name="probe_a.mar", default=True, min_workers=2, max_workers=4,
        batch_size=8, max_batch_delay=50, response_timeout=60)]


def test_numbers_and_booleans_written_as_strings_are_read_as_gson_reads_them(probe_store):
    text = snapshot({"probe": {"1.0": version("probe_a.mar", defaultVersion="true",
                                              batchSize="4", minWorkers="1")}})
    [entry] = read_snapshot(text, str(probe_store))
    assert (entry.default, entry.batch_size, entry.min_workers) == (True, 4, 1)


def test_a_snapshot_with_a_model_count_of_zero_lists_no_models(probe_store):
    assert read_snapshot(snapshot({"probe": {"1.0": version("probe_a.mar")}}, count=0),
                         str(probe_store)) == []


def test_a_snapshot_without_a_model_count_lists_no_models_as_in_torchserve(probe_store):
    text = json.dumps({"models": {"probe": {"1.0": version("probe_a.mar")}}})
    assert read_snapshot(text, str(probe_store)) == []


@pytest.mark.parametrize("key", ["defaultVersion", "marName", "minWorkers", "maxWorkers",
                                 "batchSize", "maxBatchDelay"])
def test_a_version_without_a_required_key_is_refused_naming_it(probe_store, key):
    entry = version("probe_a.mar")
    del entry[key]
    with pytest.raises(ConfigError, match=f"model probe version 1.0 has no {key}"):
        read_snapshot(snapshot({"probe": {"1.0": entry}}), str(probe_store))


def test_an_archive_that_is_not_in_the_model_store_is_refused_naming_it(probe_store):
    with pytest.raises(ConfigError, match="the archive gone.mar of model probe is not in the "
                                          "model store"):
        read_snapshot(snapshot({"probe": {"1.0": version("gone.mar")}}), str(probe_store))


def test_max_workers_below_min_workers_is_refused(probe_store):
    entry = version("probe_a.mar", minWorkers=3, maxWorkers=2)
    with pytest.raises(ConfigError, match=r"maxWorkers \(2\) is less than minWorkers \(3\)"):
        read_snapshot(snapshot({"probe": {"1.0": entry}}), str(probe_store))


def test_a_snapshot_that_is_not_json_is_refused():
    with pytest.raises(ConfigError, match="model_snapshot: not JSON"):
        read_snapshot("{name: startup.cfg}", None)


# -- a server started from a snapshot -------------------------------------------------


def test_a_server_serves_every_listed_version_under_the_snapshots_name_and_default(
        probe_store, tmp_path):
    text = snapshot({"probe": {"1.0": version("probe_a.mar", default=False),
                               "2.0": version("probe_b.mar", default=True, batchSize=4,
                                              maxBatchDelay=30, maxWorkers=2,
                                              responseTimeout=45)}})
    server = start_server(tmp_path, probe_store, [], model_snapshot=text)
    try:
        answer = httpx.post(f"{server.inference_url}/predictions/probe", content=b"x")
        assert answer.text == "2.0"  # defaultVersion, though 1.0 was registered first
        assert httpx.post(f"{server.inference_url}/predictions/probe/1.0", content=b"x").text == "1.0"
        [described] = httpx.get(f"{server.management_url}/models/probe").json()
        assert {key: described[key] for key in ("modelVersion", "batchSize", "maxBatchDelay",
                                                "minWorkers", "maxWorkers", "responseTimeout",
                                                "loadedAtStartup")} == {
            "modelVersion": "2.0", "batchSize": 4, "maxBatchDelay": 30, "minWorkers": 1,
            "maxWorkers": 2, "responseTimeout": 45, "loadedAtStartup": True}
    finally:
        server.stop()


def test_the_snapshots_settings_win_over_the_archives_model_config(tmp_path):
    store = tmp_path / "store"
    config = tmp_path / "model-config.yaml"
    config.write_text("minWorkers: 2\nmaxWorkers: 3\nbatchSize: 8\nmaxBatchDelay: 500\n")
    archive_model(store, "probe", HANDLERS / "version_probe.py",
                  extra=["--config-file", str(config)])
    text = snapshot({"probe": {"1.0": version("probe.mar", batchSize=2, maxBatchDelay=20)}})
    server = start_server(tmp_path, store, [], model_snapshot=text)
    try:
        [described] = httpx.get(f"{server.management_url}/models/probe").json()
        assert (described["minWorkers"], described["maxWorkers"], described["batchSize"],
                described["maxBatchDelay"], len(described["workers"])) == (1, 1, 2, 20, 1)
    finally:
        server.stop()


def test_a_snapshot_replaces_the_models_flag_as_in_torchserve(probe_store, tmp_path):
    text = snapshot({"probe": {"1.0": version("probe_a.mar")}})
    server = start_server(tmp_path, probe_store, ["other=probe_b.mar"], model_snapshot=text)
    try:
        models = httpx.get(f"{server.management_url}/models").json()["models"]
        assert [model["modelName"] for model in models] == ["probe"]
        assert "model_snapshot is set: load_models (--models) is ignored" in server.log()
    finally:
        server.stop()


def test_pyserve_start_refuses_a_snapshot_whose_archive_is_not_in_the_store(probe_store, tmp_path):
    config = tmp_path / "config.properties"
    write_loopback_config(config, model_snapshot=snapshot({"probe": {"1.0": version("gone.mar")}}))
    result = subprocess.run(
        [sys.executable, "-P", "-m", "pyserve", "start", "--foreground", "--model-store",
         str(probe_store), "--ts-config", str(config)],
        capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert "model_snapshot: the archive gone.mar of model probe is not in the model store" in result.stderr
