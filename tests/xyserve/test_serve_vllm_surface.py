"""What a vLLM user meets first, outside request bodies: ``xyserve serve``'s flags as
``vllm serve`` takes them, ``--version``, the service routes (/v1/models with several served
names, /ping) and the model's generation config as request defaults (``--generation-config``)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_harness import Server, run_server

from xyserve import LLM, SamplingParams
from xyserve.cli import main as xyserve_main
from xyserve.config import ATTENTION_BACKENDS, GEMM_BACKENDS, EngineConfig
from xyserve.server.cli import human_readable_int, parse_args, server_options
from xyserve.server.options import ServerOptions
from xyserve.server.protocol import ChatCompletionRequest, CompletionRequest

NAMES = ["tiny-gen", "alias/two"]
# the tiny model's generation config: greedy, 5 new tokens, and no EOS (so lengths are exact)
GEN = {"temperature": 0.0, "max_new_tokens": 5, "eos_token_id": []}


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


@pytest.mark.parametrize("argv", [["--enable-prefix"], ["--gen", "auto"], ["--max-model", "64"]])
def test_a_flag_is_taken_whole_never_by_a_prefix(argv, capsys):
    """argparse took ``--enable-prefix`` for --enable-prefix-caching (and any unknown flag
    that begins one of ours for it): a flag that is not ours is a usage error naming it."""
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2 and argv[0] in capsys.readouterr().err


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


def test_an_unknown_dtype_is_a_usage_error_before_the_model_loads(capsys):
    """``--dtype foo`` bound the port and started loading the model before the loader found
    the name unknown; vLLM's names and aliases are all taken."""
    with pytest.raises(SystemExit) as e:
        parse_args(["--dtype", "foo"])
    assert e.value.code == 2 and "'foo'" in capsys.readouterr().err
    for name in ("auto", "float32", "float", "bfloat16", "float16", "half"):
        assert parse_args(["--dtype", name])[1].dtype == name
    from xyserve.model.loader import DTYPES

    assert set(DTYPES) == {"float32", "float", "bfloat16", "float16", "half"}


@pytest.mark.parametrize("as_file", [False, True])
def test_a_chat_template_with_a_syntax_error_is_refused_at_start(as_file, tmp_path):
    """``--chat-template '{{ bad'`` (inline or in a file) started the server, and then every
    chat request failed with a 400."""
    good, bad = "{% for m in messages %}{{ m.content }}{% endfor %}", "{% for m in messages %}"
    for template, ok in ((good, True), (bad, False)):
        value = template
        if as_file:
            value = str(tmp_path / "t.jinja")
            Path(value).write_text(template)
        ns = parse_args(["--chat-template", value])[0]
        if ok:
            assert server_options(ns).chat_template == template
        else:
            with pytest.raises(ValueError, match="--chat-template: not a valid Jinja template"):
                server_options(ns)


def test_ctrl_c_while_the_model_loads_exits_130_without_a_traceback(monkeypatch, capsys):
    """Ctrl-C before the server ran (the model loading) ended in a KeyboardInterrupt
    traceback; now one line, exit code 130, and the port bound for the server is closed."""
    from xyserve.server import cli
    from xyserve.server.async_engine import AsyncLLM

    socks, real_bind = [], cli.bind_socket

    def bind(host: str, port: int):  # noqa: ANN202 - socket.socket
        socks.append(real_bind(host, port))
        return socks[-1]

    def interrupted(config):  # noqa: ANN001, ANN202 - Ctrl-C arriving inside the load
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "bind_socket", bind)
    monkeypatch.setattr(AsyncLLM, "from_config", interrupted)
    try:
        rc = cli.main(["--port", "0"])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C during the load escaped main()")
    assert rc == 130
    assert capsys.readouterr().err.strip().splitlines() == ["xyserve serve: interrupted"]
    assert len(socks) == 1 and socks[0].fileno() == -1  # closed


def test_the_serving_line_names_the_port_bound_with_port_0(monkeypatch, caplog):
    """``--port 0`` (any free port) logged "serving ... on http://127.0.0.1:0/v1"."""
    import types

    import uvicorn

    from xyserve.server import app, cli
    from xyserve.server.async_engine import AsyncLLM

    ports, real_bind = [], cli.bind_socket

    def bind(host: str, port: int):  # noqa: ANN202 - socket.socket
        sock = real_bind(host, port)
        ports.append(sock.getsockname()[1])
        return sock

    monkeypatch.setattr(cli, "bind_socket", bind)
    monkeypatch.setattr(
        AsyncLLM, "from_config", lambda config: types.SimpleNamespace(model_name="m")
    )
    monkeypatch.setattr(app, "create_app", lambda llm, options=None: None)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    with caplog.at_level("INFO", logger="xyserve"):
        assert cli.main(["--port", "0"]) == 0
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("serving")]
    assert ports[0] != 0 and f"http://127.0.0.1:{ports[0]}/v1" in line


def test_version_flag(capsys):
    import xyserve

    for flag in ("--version", "-v"):
        assert xyserve_main([flag]) == 0
        assert capsys.readouterr().out.strip() == xyserve.__version__


def test_generation_config_flag():
    assert parse_args([])[1].generation_config == "auto"
    assert parse_args(["--generation-config", "vllm"])[1].generation_config == "vllm"


# ---- the server --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gen_model(tiny_llama: Path, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gen") / "model"
    shutil.copytree(tiny_llama, path)
    (path / "generation_config.json").write_text(json.dumps(GEN))
    return path


@pytest.fixture(scope="module")
def server(gen_model: Path) -> Iterator[Server]:
    config = EngineConfig(
        model=str(gen_model),
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


def _chat(server: Server, **kw):
    messages = [{"role": "user", "content": "Tell me about the sea"}]
    return server.client("sekret").chat.completions.create(model=NAMES[0], messages=messages, **kw)


def test_generation_config_gives_request_defaults_and_a_requests_value_wins(server: Server):
    """The model's generation_config.json (temperature, max_new_tokens, ...) was not read:
    a chat without max_tokens ran to max_model_len, sampled at temperature 1."""
    r = _chat(server)
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"
    # greedy by default: seeds do not matter
    texts = {_chat(server, seed=s).choices[0].message.content for s in (1, 2, 3)}
    assert len(texts) == 1
    # a request's own values win
    assert _chat(server, max_tokens=7).usage.completion_tokens == 7
    sampled = {_chat(server, seed=s, temperature=1.0).choices[0].message.content for s in (1, 2, 3)}
    assert len(sampled) > 1
    client = server.client("sekret")
    # completions keep OpenAI's max_tokens default of 16; an explicit null takes the model's
    r = client.completions.create(model=NAMES[0], prompt="hi")
    assert r.usage.completion_tokens == 16
    r = client.completions.create(model=NAMES[0], prompt="hi", extra_body={"max_tokens": None})
    assert r.usage.completion_tokens == 5


def test_the_default_max_tokens_is_capped_to_what_the_prompt_leaves(server: Server):
    """A prompt 3 tokens short of max_model_len gets 3 tokens, not a 400 for max_tokens."""
    ids = [5] * (256 - 3)
    r = server.client("sekret").completions.create(
        model=NAMES[0], prompt=ids, extra_body={"max_tokens": None}
    )
    assert r.usage.completion_tokens == 3


def test_sampling_defaults_fill_only_what_a_request_leaves_unset():
    defaults = {"temperature": 0.3, "top_p": 0.9, "top_k": 7, "repetition_penalty": 1.1}
    msgs = [{"role": "user", "content": "x"}]
    sp = ChatCompletionRequest(messages=msgs).to_sampling_params(defaults)
    assert (sp.temperature, sp.top_p, sp.top_k, sp.repetition_penalty) == (0.3, 0.9, 7, 1.1)
    sp = ChatCompletionRequest(messages=msgs, temperature=1.0, top_k=-1).to_sampling_params(
        defaults
    )
    assert (sp.temperature, sp.top_k <= 0, sp.top_p) == (1.0, True, 0.9)
    sp = CompletionRequest(prompt="x", top_p=1.0).to_sampling_params(defaults)
    assert (sp.top_p, sp.temperature, sp.max_tokens) == (1.0, 0.3, 16)


# ---- offline -----------------------------------------------------------------------------------


def test_offline_defaults_follow_the_generation_config(gen_model: Path):
    llm = LLM(str(gen_model), max_model_len=64, device="cpu")
    sp = llm.get_default_sampling_params()
    assert sp.temperature == 0.0 and sp.max_tokens is None
    (out,) = llm.generate("hello", use_tqdm=False)
    assert len(out.outputs[0].token_ids) == 5
    explicit = SamplingParams(temperature=0.0, max_tokens=7, ignore_eos=True)
    (out,) = llm.generate("hello", explicit, use_tqdm=False)
    assert len(out.outputs[0].token_ids) == 7
    plain = LLM(str(gen_model), max_model_len=64, device="cpu", generation_config="vllm")
    assert plain.get_default_sampling_params() == SamplingParams()


def test_generation_config_refuses_a_folder_without_one_and_a_bad_value(gen_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="generation_config.json"):
        LLM(str(gen_model), device="cpu", generation_config=str(tmp_path))
    bad = tmp_path / "bad"
    shutil.copytree(gen_model, bad)
    (bad / "generation_config.json").write_text(json.dumps({"temperature": -1}))
    with pytest.raises(ValueError, match="generation_config.json"):
        LLM(str(bad), device="cpu")
