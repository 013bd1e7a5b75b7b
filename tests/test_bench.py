"""`pyserve bench`, run as users run it, against a real pyserve on loopback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import HANDLERS, archive_model, closed_port, start_server
from pyserve.bench.histogram import draw_histogram
from pyserve.bench.loadgen import build_request, run_python
from pyserve.bench.serving import served

RUN_LIMIT = 180


@pytest.fixture
def echo_url(echo_server) -> str:
    return f"{echo_server.inference_url}/predictions/echo"


def bench(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-P", "-m", "pyserve", "bench", "--warmup", "0", *arguments],
        capture_output=True, text=True, timeout=RUN_LIMIT,
    )


def bench_json(*arguments: str) -> tuple[int, dict]:
    finished = bench("--json", *arguments)
    assert finished.stdout, finished.stderr
    return finished.returncode, json.loads(finished.stdout)


@pytest.mark.parametrize("engine", ["native", "python"])
def test_a_request_count_sends_exactly_that_many(echo_url, engine):
    code, report = bench_json(echo_url, "--engine", engine, "-n", "301", "-c", "4", "--rounds", "3")
    (result,) = report["results"]
    assert code == 0
    assert result["requests"] == 301
    assert result["statuses"] == {"200": 301}
    assert result["errors"] == {}


def test_the_json_report_has_rate_percentiles_and_client_cpu(echo_url):
    code, report = bench_json(echo_url, "-n", "200", "-c", "2")
    (result,) = report["results"]
    assert code == 0
    assert result["target"] == echo_url
    assert result["connections"] == 2
    assert result["requests_per_second"] > 0
    latency = result["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert result["client_cpu_us_per_request"] > 0


def test_a_duration_ends_the_run(echo_url):
    code, report = bench_json(echo_url, "-d", "1", "-c", "2", "--rounds", "1")
    (result,) = report["results"]
    assert code == 0
    assert 0.9 <= result["seconds"] < 10
    assert result["requests"] > 0


def test_error_statuses_are_counted_and_fail_the_run(echo_server):
    url = f"{echo_server.inference_url}/predictions/no-such-model"
    code, report = bench_json(url, "-n", "50", "-c", "2")
    (result,) = report["results"]
    assert code == 1
    assert result["statuses"] == {"404": 50}


def test_a_server_that_is_not_there_counts_connect_errors(tmp_path):
    with closed_port() as port:
        code, report = bench_json(f"http://127.0.0.1:{port}/predictions/echo", "-n", "5", "-c", "1")
    (result,) = report["results"]
    assert code == 1
    assert result["requests"] == 0
    assert result["errors"]["connect"] >= 1


def test_compare_measures_both_targets_and_prints_ratios(echo_url):
    code, report = bench_json(echo_url, "--compare", echo_url, "-n", "100", "-c", "2")
    assert code == 0
    assert [r["requests"] for r in report["results"]] == [100, 100]
    assert set(report["ratios"]) == {"requests_per_second", "p50", "p90", "p99"}
    assert all(value > 0 for value in report["ratios"].values())


def test_an_archive_target_is_served_for_the_run(model_store):
    code, report = bench_json(str(model_store / "echo.mar"), "-n", "100", "-c", "2")
    (result,) = report["results"]
    assert code == 0
    assert result["target"].endswith("/predictions/echo")
    assert result["statuses"] == {"200": 100}


def test_a_body_file_is_sent(echo_url, tmp_path):
    body = tmp_path / "input.json"
    body.write_text(json.dumps([0.5] * 64))
    code, report = bench_json(echo_url, "--body-file", str(body), "--content-type",
                              "application/json", "-n", "20", "-c", "1")
    assert code == 0
    assert report["results"][0]["statuses"] == {"200": 20}


def test_a_missing_body_file_is_a_clear_error(echo_url, tmp_path):
    finished = bench(echo_url, "--body-file", str(tmp_path / "absent.bin"), "-n", "5")
    assert finished.returncode != 0
    assert "absent.bin" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_a_target_that_is_neither_url_nor_file_is_a_clear_error(tmp_path):
    finished = bench(str(tmp_path / "missing.mar"), "-n", "5")
    assert finished.returncode != 0
    assert "neither a URL nor an archive" in finished.stderr


def test_an_https_target_is_refused_clearly():
    finished = bench("https://127.0.0.1:1/predictions/echo", "-n", "5")
    assert finished.returncode != 0
    assert "https is not supported" in finished.stderr


def test_fewer_requests_than_rounds_are_refused(echo_url):
    finished = bench(echo_url, "-n", "1", "--rounds", "2")
    assert finished.returncode != 0
    assert "--requests" in finished.stderr


def test_the_table_names_the_target_and_its_rate(echo_url):
    finished = bench(echo_url, "-n", "50", "-c", "1")
    assert finished.returncode == 0, finished.stderr
    assert "req/s" in finished.stdout
    assert "/predictions/echo" in finished.stdout


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def flaky_url(tmp_path_factory) -> str:
    """A model with one worker whose every other batch fails (a 5xx answer)."""
    store = tmp_path_factory.mktemp("flaky_store")
    archive_model(store, "flaky", HANDLERS / "every_other_fails.py")
    server = start_server(tmp_path_factory.mktemp("flaky"), store, ["flaky=flaky.mar"],
                          default_workers_per_model=1)
    yield f"{server.inference_url}/predictions/flaky"
    server.stop()


def test_a_run_where_every_request_fails_says_so_first_and_exits_non_zero(echo_server):
    finished = bench(f"{echo_server.inference_url}/predictions/no-such-model", "-n", "50", "-c", "2")
    assert finished.returncode == 1
    first_line = finished.stdout.strip().splitlines()[0]
    assert "every request failed" in first_line
    assert "404: 50" in first_line
    assert "req/s" not in finished.stdout


def test_the_json_of_a_run_where_every_request_fails_has_its_outcome_and_no_rate(echo_server):
    finished = bench("--json", f"{echo_server.inference_url}/predictions/no-such-model",
                     "-n", "50", "-c", "2")
    (result,) = json.loads(finished.stdout)["results"]
    assert finished.returncode == 1
    assert result["outcome"] == "all failed"
    assert result["error_rate"] == 1.0
    assert result["requests_per_second"] is None
    assert set(result["latency_ms"].values()) == {None}
    assert "every request failed" in finished.stderr


def test_a_mixed_run_shows_the_error_rate_before_the_rate(flaky_url):
    finished = bench(flaky_url, "-n", "100", "-c", "1")
    assert finished.returncode == 1
    assert "50.0% of requests failed (50 of 100; 5" in finished.stdout
    assert finished.stdout.index("of requests failed") < finished.stdout.index("req/s")


def test_the_json_of_a_mixed_run_puts_the_error_rate_before_the_rate(flaky_url):
    finished = bench("--json", flaky_url, "-n", "100", "-c", "1")
    (result,) = json.loads(finished.stdout)["results"]
    assert finished.returncode == 1
    assert result["outcome"] == "some failed"
    assert result["error_rate"] == 0.5
    assert result["statuses"]["200"] == 50
    keys = list(result)
    assert keys.index("error_rate") < keys.index("statuses") < keys.index("requests_per_second")
    assert "50.0% of requests failed" in finished.stderr


def test_a_histogram_png_is_written_and_its_path_printed(echo_url, tmp_path):
    picture = tmp_path / "latency.png"
    finished = bench(echo_url, "--compare", echo_url, "-n", "100", "--histogram", str(picture))
    assert finished.returncode == 0, finished.stderr
    assert picture.read_bytes().startswith(PNG_SIGNATURE)
    assert f"latency histogram written to {picture}" in finished.stderr


def test_the_histogram_labels_an_archive_target_by_its_model_name(model_store):
    with served(model_store / "echo.mar") as url:
        result = run_python(url, build_request(url, b"hello"), 1, None, 20)
    (legend,) = draw_histogram([result]).legends
    (label,) = [text.get_text() for text in legend.get_texts()]
    assert label.startswith("echo: p50 ")
    assert "127.0.0.1" not in label


def test_without_matplotlib_the_report_prints_and_says_how_to_get_the_plot(echo_url, tmp_path):
    picture = tmp_path / "latency.png"
    hide_matplotlib = ("import sys; sys.modules['matplotlib'] = None; from pyserve.cli import main; "
                       "sys.exit(main(sys.argv[1:]))")
    finished = subprocess.run(
        [sys.executable, "-P", "-c", hide_matplotlib, "bench", "--warmup", "0", echo_url,
         "-n", "50", "-c", "1", "--histogram", str(picture)],
        capture_output=True, text=True, timeout=RUN_LIMIT,
    )
    assert finished.returncode == 0, finished.stderr
    assert "req/s" in finished.stdout
    assert "pip install 'pyserve[bench]'" in finished.stderr
    assert not picture.exists()
