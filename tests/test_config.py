"""config.properties, TS_* environment variables and CLI flags, read as TorchServe reads them."""

from __future__ import annotations

import pytest

from pyserve.config import ConfigError, Settings, load_settings, parse_address, read_properties
from pyserve.server import frontend_count


def test_properties_take_equals_colon_and_space_separators():
    assert read_properties("a=1\nb: 2\nc 3\n", {}) == {"a": "1", "b": "2", "c": "3"}


def test_comments_and_blank_lines_are_skipped():
    assert read_properties("# one\n! two\n\n  a = 1\n", {}) == {"a": "1"}


def test_a_trailing_backslash_continues_the_value():
    assert read_properties("a=first \\\n    second\n", {}) == {"a": "first second"}


def test_java_escapes_are_undone():
    text = "pattern=http://127\\\\.0\\\\.0\\\\.1:\\\\d+\ntab=a\\tb\nletter=\\u0041\n"
    assert read_properties(text, {}) == {
        "pattern": "http://127\\.0\\.0\\.1:\\d+", "tab": "a\tb", "letter": "A"}


def test_placeholders_are_filled_from_the_environment():
    assert read_properties("store=$$HOME$$/models\n", {"HOME": "/h"}) == {"store": "/h/models"}


def write(tmp_path, text: str):
    path = tmp_path / "config.properties"
    path.write_text(text)
    return path


def test_known_keys_are_typed(tmp_path):
    settings = load_settings(write(tmp_path, "job_queue_size=7\nenable_model_api=true\n"
                                             "load_models=a.mar,b.mar\n"), env={})
    assert (settings.job_queue_size, settings.enable_model_api) == (7, True)
    assert settings.load_models == ["a.mar", "b.mar"]


def test_jvm_only_keys_are_ignored(tmp_path):
    settings = load_settings(write(tmp_path, "vmargs=-Xmx4g\nnumber_of_netty_threads=4\n"), env={})
    assert settings.job_queue_size == 100


def test_a_bad_value_names_its_key(tmp_path):
    with pytest.raises(ConfigError, match="job_queue_size"):
        load_settings(write(tmp_path, "job_queue_size=lots\n"), env={})


def test_env_vars_apply_only_when_enabled(tmp_path):
    env = {"TS_JOB_QUEUE_SIZE": "9"}
    assert load_settings(write(tmp_path, ""), env=env).job_queue_size == 100
    enabled = load_settings(write(tmp_path, "enable_envvars_config=true\n"), env=env)
    assert enabled.job_queue_size == 9


def test_env_allowed_urls_need_use_env_allowed_urls(tmp_path):
    env = {"TS_ALLOWED_URLS": "http://x/.*"}
    plain = load_settings(write(tmp_path, "enable_envvars_config=true\n"), env=env)
    assert plain.allowed_urls == []
    opted = load_settings(write(tmp_path, "enable_envvars_config=true\nuse_env_allowed_urls=true\n"), env=env)
    assert opted.allowed_urls == ["http://x/.*"]


def test_the_files_allowed_urls_stand_when_the_env_ones_are_not_used(tmp_path):
    env = {"TS_ALLOWED_URLS": "http://x/.*"}
    settings = load_settings(write(tmp_path, "enable_envvars_config=true\n"
                                             "allowed_urls=file://.*\n"), env=env)
    assert settings.allowed_urls == ["file://.*"]


def test_cli_values_win_over_file_and_env(tmp_path):
    env = {"TS_MODEL_STORE": "/env"}
    settings = load_settings(write(tmp_path, "model_store=/file\nenable_envvars_config=true\n"),
                             env=env, model_store="/cli")
    assert settings.model_store == "/cli"


def test_no_remote_urls_are_allowed_by_default():
    assert load_settings(None, env={}).allowed_urls == []


def test_a_missing_config_file_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.properties", env={})


@pytest.mark.parametrize("address, expected", [
    ("http://127.0.0.1:8080", ("127.0.0.1", 8080)),
    ("127.0.0.1:9", ("127.0.0.1", 9)),
    ("http://[::1]:8081", ("::1", 8081)),
])
def test_listener_addresses_parse(address, expected):
    assert parse_address(address) == expected


def test_a_listener_address_without_host_is_refused():
    with pytest.raises(ConfigError, match="listener address"):
        parse_address("ftp://:80")


def test_every_listener_binds_loopback_unless_configured(tmp_path):
    settings = load_settings(write(tmp_path, ""), env={})
    addresses = [settings.inference_address, settings.management_address,
                 settings.metrics_address]
    assert [parse_address(address)[0] for address in addresses] == ["127.0.0.1"] * 3


def test_remote_model_urls_are_refused_unless_allowed(tmp_path):
    assert load_settings(write(tmp_path, ""), env={}).allowed_urls == []


def test_token_authorization_is_on_by_default(tmp_path):
    assert load_settings(write(tmp_path, ""), env={}).disable_token_authorization is False


@pytest.mark.parametrize("key, value", [
    ("max_request_size", 2**32 + 8), ("max_response_size", 2**31), ("job_queue_size", 10**12),
    ("job_queue_size", 0), ("default_response_timeout", 0), ("frontend_processes", 100_000),
])
def test_a_size_or_count_out_of_range_is_refused_at_start_with_its_key(tmp_path, key, value):
    config = tmp_path / "config.properties"
    config.write_text(f"{key}={value}\n")
    with pytest.raises(ConfigError, match=f"{key}: {value} is out of range"):
        load_settings(config, env={})


def test_the_largest_request_size_torchserve_can_hold_is_accepted(tmp_path):
    config = tmp_path / "config.properties"
    config.write_text(f"max_request_size={2**31 - 1}\n")
    assert load_settings(config, env={}).max_request_size == 2**31 - 1


@pytest.mark.parametrize("cores, expected", [(1, 1), (2, 1), (7, 1), (8, 4), (16, 8), (64, 8)])
def test_frontend_processes_0_picks_by_cores(cores, expected):
    assert frontend_count(Settings(), cores) == expected


def test_frontend_processes_set_is_taken_as_it_is():
    assert frontend_count(Settings(frontend_processes=3), 64) == 3
