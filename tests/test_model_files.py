"""Files a manifest names (configFile, requirementsFile) are read only from inside the model."""

from __future__ import annotations

import pytest

from pyserve.engine.loading import inside_model, read_yaml
from pyserve.errors import BadRequest


def test_a_config_file_outside_the_model_is_refused(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "secret.yaml").write_text("batchSize: 4\n")
    with pytest.raises(BadRequest, match="outside the model archive"):
        read_yaml(model, "../secret.yaml")


def test_an_absolute_requirements_path_is_refused(tmp_path):
    with pytest.raises(BadRequest, match="outside the model archive"):
        inside_model(tmp_path, "/etc/passwd", "requirements file")


def test_a_config_file_that_is_not_utf8_is_a_clear_error(tmp_path):
    (tmp_path / "model-config.yaml").write_bytes(b"batchSize: \xff\xfe\n")
    with pytest.raises(BadRequest, match="cannot read model config"):
        read_yaml(tmp_path, "model-config.yaml")


def test_a_config_file_inside_the_model_is_read(tmp_path):
    (tmp_path / "model-config.yaml").write_text("batchSize: 4\n")
    assert read_yaml(tmp_path, "model-config.yaml") == {"batchSize": 4}
