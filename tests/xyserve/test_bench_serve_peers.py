"""bench serve's peer servers: the id tokenizer's exact round trip, text prompts on the wire,
and the peer's command line."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys

import httpx
import pytest

from xyserve.bench.serve_client import send
from xyserve.bench.serve_peers import TextPrompts, peer_command, write_id_tokenizer
from xyserve.bench.serve_workload import BenchRequest


def test_id_tokenizer_texts_tokenize_back_to_the_same_ids(tmp_path):
    write_id_tokenizer(tmp_path, 600)
    prompts = [[5, 77, 300, 599], [1], [3] * 40 + [598, 4]]
    texts, drift = TextPrompts(str(tmp_path)).texts(prompts)
    assert texts[0] == "t5 t77 t300 t599"
    assert drift == 0.0
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert [tok(t, add_special_tokens=False)["input_ids"] for t in texts] == prompts


def test_text_prompts_say_how_far_a_tokenizer_moves_the_lengths(tmp_path):
    """A tokenizer whose text of four ids tokenizes back to one token: a drift of 3/4 is
    reported, not hidden; a directory without a tokenizer is a clear error."""

    class Merging:
        def decode(self, ids):
            return "".join(f"t{i}" for i in ids)

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [0]}

    tp = TextPrompts.__new__(TextPrompts)
    tp.tok = Merging()
    texts, drift = tp.texts([[5, 6, 7, 8], [9]])
    assert texts == ["t5t6t7t8", "t9"] and drift == pytest.approx((0.75 + 0.0) / 2)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        TextPrompts(str(tmp_path / "none"))


def test_a_text_prompt_goes_on_the_wire_as_text():
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        body = (
            b'data: {"choices": [{"index": 0, "text": "t9", "finish_reason": null}]}\n\n'
            b'data: {"choices": [{"index": 0, "text": "t8", "finish_reason": "length"}]}\n\n'
            b"data: [DONE]\n\n"
        )
        return httpx.Response(200, content=body)

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            req = BenchRequest([5, 6], 2)
            url = "http://127.0.0.1:1/v1/completions"
            a = await send(
                client, url, "m", req, use_logprobs=False, prompt="t5 t6", ignore_eos=False
            )
            b = await send(client, url, "m", req)
            return a, b

    a, b = asyncio.run(go())
    assert [s["prompt"] for s in seen] == ["t5 t6", [5, 6]]
    assert "logprobs" not in seen[0] and "ignore_eos" not in seen[0]
    assert seen[1]["ignore_eos"] is True and seen[1]["logprobs"] == 0
    assert a.error is None and a.num_tokens == 2  # one token per non-empty chunk


def test_peer_command_lines():
    cmd = peer_command("hf", "/m", 8001)
    assert cmd[:5] == [sys.executable, "-m", "transformers.cli.transformers", "serve", "/m"]
    assert cmd[cmd.index("--port") + 1] == "8001" and cmd[-1] == "--continuous-batching"
    assert peer_command("hf", "/m", 1, "--attn-implementation sdpa")[-2:] == [
        "--attn-implementation",
        "sdpa",
    ]
    with pytest.raises(ValueError, match="unknown peer"):
        peer_command("vllm", "/m", 1)


def test_run_load_hands_each_request_its_text_and_the_peers_body_options(monkeypatch):
    from xyserve.bench.serve_client import RequestResult
    from xyserve.bench.serve_load import run_load

    got = []

    async def fake_send(client, url, model, req, clock, use_logprobs, leave, **kw):
        got.append((req.prompt_ids, use_logprobs, kw))
        return RequestResult(1, 1, 0.0, [(0.1, 1)], 0.1)

    monkeypatch.setattr("xyserve.bench.serve_load.send", fake_send)
    reqs = [BenchRequest([3], 1), BenchRequest([4], 1)]
    asyncio.run(
        run_load(
            "http://127.0.0.1:1", "m", reqs, concurrency=1, progress=False,
            use_logprobs=False, prompts=["t3", "t4"], ignore_eos=False,
        )
    )  # fmt: skip
    assert got == [
        ([3], False, {"prompt": "t3", "ignore_eos": False, "timeout_s": 600.0}),
        ([4], False, {"prompt": "t4", "ignore_eos": False, "timeout_s": 600.0}),
    ]
    with pytest.raises(ValueError, match="one prompt text per request"):
        asyncio.run(run_load("http://127.0.0.1:1", "m", reqs, concurrency=1, prompts=["t3"]))


TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 300,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
    "eos_token_id": None,  # no end token: the peer (sent no ignore_eos) runs to max_tokens
}


@pytest.mark.skipif(
    importlib.util.find_spec("accelerate") is None, reason="transformers serve needs accelerate"
)
def test_a_short_run_beside_hf_transformers_serve(tmp_path, capsys):
    """xyserve and the HF peer on the same random model: every request of both completes, the
    peer's tokens counted one per chunk from text prompts."""
    from xyserve.bench import serve

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY_CONFIG))
    work = tmp_path / "work.json"
    work.write_text(
        json.dumps(
            {
                "schema": "xyserve.serve-workload/1",
                "name": "tiny",
                "description": "short prompts and outputs",
                "prompt_len": [[4, 20, 1]],
                "output_len": [[3, 8, 1]],
            }
        )
    )
    out = tmp_path / "out.json"
    rc = serve.main(
        [
            "--model", str(cfg), "--workload", str(work), "--request-rate", "inf",
            "--num-prompts", "4", "--threads", "1", "--system", "hybrid=", "--peer", "hf",
            "--engine-args", "--num-kv-blocks 32", "--slo-ttft-ms", "60000",
            "--slo-tbt-ms", "60000", "--json", str(out), "--no-progress", "--warmup", "1",
        ]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr()
    runs = {r["label"]: r for r in json.loads(out.read_text())["runs"]}
    assert set(runs) == {"hybrid", "hf"}
    for r in runs.values():
        assert r["num_failed"] == 0, r["errors"]
        assert r["num_completed"] == 4
    assert runs["hf"]["server"] == {"checked": False}  # no xyserve gauges to read


def test_a_peer_without_a_tokenizer_is_refused_before_any_server_starts(tmp_path, monkeypatch):
    import argparse

    from xyserve.bench import serve_systems
    from xyserve.bench.serve_server import ServerProcess

    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
    started = []
    monkeypatch.setattr(ServerProcess, "launch", lambda self: started.append(self) or self)
    args = argparse.Namespace(
        base_url=None, model=str(tmp_path), peer=["hf"], peer_args="", system=["a="],
        engine_args="", threads=1, startup_timeout=1.0, seed=0,
    )  # fmt: skip
    with pytest.raises(ValueError, match="needs a tokenizer"):
        serve_systems.start_systems(args, tmp_path / "scratch")
    assert started == []


def test_base_url_reads_the_served_models_config(tmp_path, monkeypatch):
    """`bench serve --base-url URL` stopped with "--vocab-size is needed" against any server,
    the bundled model's included: the config of a running server's model was never read. It
    is now read from the folder /v1/models names as `root` (None where there is none)."""
    import argparse

    from xyserve.bench import serve_systems

    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 321}))
    models = {"data": [{"id": "m", "root": str(tmp_path)}]}

    def fake_get(url, **kw):
        assert url == "http://127.0.0.1:9/v1/models"
        return httpx.Response(200, json=models)

    monkeypatch.setattr(serve_systems.httpx, "get", fake_get)
    args = argparse.Namespace(base_url="http://127.0.0.1:9/", model=None, peer=None, label="s")
    systems, _, cfg = serve_systems.start_systems(args, tmp_path / "scratch")
    assert [s.base_url for s in systems] == ["http://127.0.0.1:9"] and cfg == {"vocab_size": 321}
    models["data"][0]["root"] = str(tmp_path / "nowhere")
    assert serve_systems.start_systems(args, tmp_path / "scratch")[2] is None
