"""Versioned bench data files: a loader refuses a file of another schema or version, and a
malformed one, with a message naming the file and the field (not a traceback later)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xyserve.bench.cases import WORKLOADS, load_workload
from xyserve.bench.serve_workload import packaged_path


def _write(tmp_path: Path, data: object) -> Path:
    p = tmp_path / "w.json"
    p.write_text(json.dumps(data))
    return p


def test_step_workload_refuses_other_schema_and_malformed_fields(tmp_path: Path) -> None:
    for name in WORKLOADS:  # the shipped ones still load
        assert load_workload(name)["name"] == name
    good = json.loads(packaged_path("conversation.json").read_text())
    serve = json.loads(packaged_path("serve_sharegpt.json").read_text())
    cases = [
        (serve, "field 'schema'"),  # another kind of workload
        ({**good, "schema": "xyserve.kernel_workload/2"}, "field 'schema'"),  # a newer version
        ({k: v for k, v in good.items() if k != "schema"}, "field 'schema'"),
        ([good], "JSON object"),
        ({k: v for k, v in good.items() if k != "running"}, "field 'running'"),
        ({**good, "prompt_len": [[16, 128]]}, "field 'prompt_len'"),
        ({**good, "verify_fraction": 2}, "field 'verify_fraction'"),
    ]
    for data, field in cases:
        p = _write(tmp_path, data)
        with pytest.raises(ValueError, match=field) as e:
            load_workload(str(p))
        assert str(p) in str(e.value)
    p = tmp_path / "w.json"
    p.write_text('{"schema": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_workload(str(p))


def test_spec_workload_malformed_file_names_file_and_field(tmp_path: Path) -> None:
    from xyserve.bench.spec import load_spec_workload

    assert load_spec_workload("spec_code")["prompts"]  # the shipped ones still load
    ok = {"schema": "xyserve.spec-workload/1", "prompts": ["a"], "max_tokens": 8}
    cases = [
        ({**ok, "max_tokens": "abc"}, "field 'max_tokens'"),
        ({**ok, "max_tokens": 1.5}, "field 'max_tokens'"),
        ({**ok, "prompts": "abc"}, "field 'prompts'"),
        ({**ok, "schema": "xyserve.spec-workload/2"}, "field 'schema'"),
        ([ok], "JSON object"),
    ]
    for data, field in cases:
        p = _write(tmp_path, data)
        with pytest.raises(ValueError, match=field) as e:
            load_spec_workload(p)
        assert str(p) in str(e.value)
    p = tmp_path / "w.json"
    p.write_text('{"schema": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_spec_workload(p)
