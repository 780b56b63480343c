"""What a vLLM user meets first, outside request bodies: ``xyserve serve``'s flags as
``vllm serve`` takes them, ``--version``, the service routes (/v1/models with several served
names, /ping)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_harness import Server, run_server

from xyserve.cli import main as xyserve_main
from xyserve.config import ATTENTION_BACKENDS, GEMM_BACKENDS, EngineConfig
from xyserve.server.cli import human_readable_int, parse_args
from xyserve.server.options import ServerOptions

NAMES = ["tiny-gen", "alias/two"]


# ---- the command line ------------------------------------------------------------------------


def test_served_model_name_takes_several_names_as_vllm():
    """``--served-model-name a b`` took "a" and read "b" as the MODEL positional (so the
    server tried to load a model called b)."""
    ns, cfg = parse_args(["/models/m", "--served-model-name", "a", "b"])
    assert cfg.served_model_name == ["a", "b"] and cfg.model == "/models/m"
    assert parse_args(["--served-model-name", "a"])[1].served_model_name == ["a"]
    assert EngineConfig(served_model_name="a").served_model_names("x") == ["a"]
    assert EngineConfig().served_model_names("x") == ["x"]
    for bad in ([], [""], [1]):
        with pytest.raises((TypeError, ValueError)):
            EngineConfig(served_model_name=bad)


@pytest.mark.parametrize(
    "text,value",
    [
        ("32k", 32000),
        ("32K", 32768),
        ("25.6k", 25600),
        ("1m", 10**6),
        ("2G", 2 << 30),
        ("4096", 4096),
    ],  # fmt: skip
)
def test_sizes_take_vllms_human_readable_forms(text, value):
    """``--max-model-len 32k`` (vLLM's form) was 'invalid int value'."""
    assert human_readable_int(text) == value
    cfg = parse_args(["--max-model-len", text, "--max-num-batched-tokens", text])[1]
    assert cfg.max_model_len == cfg.max_num_batched_tokens == value
    assert parse_args(["--kv-cache-memory-bytes", text])[1].kv_cache_memory_bytes == value


@pytest.mark.parametrize("text", ["1.5K", "32x", "k", "3.2"])
def test_bad_human_readable_sizes_are_usage_errors(text, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--max-model-len", text])
    assert e.value.code == 2
    assert "--max-model-len" in capsys.readouterr().err


def test_flags_take_underscores_as_vllm():
    """vLLM reads ``--max_model_len`` as ``--max-model-len``; it was 'unrecognized'."""
    ns, cfg = parse_args(
        [
            "--max_model_len=64",
            "--max_num_seqs",
            "3",
            "--no_enable_prefix_caching",
            "--served_model_name",
            "my_model",
            "--api_key",
            "k_1",
        ]  # fmt: skip
    )
    assert (cfg.max_model_len, cfg.max_num_seqs, cfg.enable_prefix_caching) == (64, 3, False)
    assert cfg.served_model_name == ["my_model"] and ns.api_key == "k_1"  # values untouched


def test_unknown_kernel_backends_are_refused_before_the_model_loads(capsys):
    """``--gemm-backend x`` loaded the model and ran the start-up checks (minutes on a CPU)
    before the engine found the name unknown."""
    for flag in ("--gemm-backend", "--attention-backend"):
        with pytest.raises(SystemExit) as e:
            parse_args([flag, "x"])
        assert e.value.code == 2 and "'x'" in capsys.readouterr().err
    from xyserve.kernels.backend import attention_backend_names, gemm_backend_names

    assert sorted(ATTENTION_BACKENDS) == attention_backend_names()
    assert sorted(GEMM_BACKENDS) == gemm_backend_names()


def test_version_flag(capsys):
    import xyserve

    for flag in ("--version", "-v"):
        assert xyserve_main([flag]) == 0
        assert capsys.readouterr().out.strip() == xyserve.__version__


# ---- the server --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[Server]:
    config = EngineConfig(
        model=str(tiny_llama),
        served_model_name=NAMES,
        max_model_len=256,
        max_num_batched_tokens=128,
        device="cpu",
    )
    with run_server(config, ServerOptions(api_key="sekret")) as srv:
        yield srv


def test_every_served_name_is_listed_and_answered_responses_carry_the_first(server: Server):
    client = server.client("sekret")
    assert [m.id for m in client.models.list().data] == NAMES
    assert client.models.retrieve(NAMES[1]).id == NAMES[1]
    r = client.completions.create(model=NAMES[1], prompt="hi", max_tokens=2)
    assert r.model == NAMES[0]  # as vLLM: the first name
    r = httpx.get(f"{server.url}/v1/models/nope", headers={"Authorization": "Bearer sekret"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_ping_and_the_probes_are_open_and_the_api_needs_the_key(server: Server):
    """/ping (SageMaker's health check, served by vLLM) was a 404 (a 401 with --api-key)."""
    for method in ("GET", "POST"):
        assert httpx.request(method, f"{server.url}/ping").status_code == 200
    for path in ("/health", "/version", "/metrics"):
        assert httpx.get(f"{server.url}{path}").status_code == 200, path
    r = httpx.get(f"{server.url}/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer sekreT"})
    assert r.status_code == 401
