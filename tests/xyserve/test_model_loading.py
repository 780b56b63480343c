"""Checkpoint loading: shards, Llama-3 RoPE scaling, Mistral, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from xyserve import LLM, SamplingParams
from xyserve.model.config import ModelLoadError

from tiny_models import build_model, train_bpe


def hf_next_tokens(path, prompt, n):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
    return ids[0, len(prompt) :].tolist()


@pytest.mark.parametrize(
    "arch,kw",
    [
        (
            "llama",
            dict(
                rope_scaling={
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64,
                },
                num_key_value_heads=1,
            ),
        ),
        ("mistral", dict(sliding_window=None)),
    ],
)
def test_variants_match_hf(tmp_path, arch, kw):
    path = build_model(tmp_path / arch, arch, with_tokenizer=False, **kw)
    prompt = list(range(3, 203, 2))  # 100 tokens: past the original RoPE length
    want = hf_next_tokens(path, prompt, 5)
    llm = LLM(str(path), skip_tokenizer_init=True, max_num_batched_tokens=32)
    out = llm.generate({"prompt_token_ids": prompt}, SamplingParams(temperature=0, max_tokens=5))
    assert out[0].outputs[0].token_ids == want


def test_sharded_checkpoint_loads(tmp_path):
    from transformers import AutoModelForCausalLM

    path = build_model(tmp_path / "m", "llama", with_tokenizer=False)
    model = AutoModelForCausalLM.from_pretrained(str(path))
    sharded = tmp_path / "sharded"
    model.save_pretrained(str(sharded), max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    want = hf_next_tokens(path, [5, 6, 7], 4)
    llm = LLM(str(sharded), skip_tokenizer_init=True)
    out = llm.generate({"prompt_token_ids": [5, 6, 7]}, SamplingParams(temperature=0, max_tokens=4))
    assert out[0].outputs[0].token_ids == want


def test_unsupported_architecture_is_named(tmp_path):
    path = build_model(tmp_path / "m", "llama", with_tokenizer=False)
    cfg = json.loads((path / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="GPT2LMHeadModel"):
        LLM(str(path), skip_tokenizer_init=True)


def test_missing_files_are_named(tmp_path):
    path = build_model(tmp_path / "m", "llama", with_tokenizer=False)
    (path / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        LLM(str(path), skip_tokenizer_init=True)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        build_model(tmp_path / "n", "llama", with_tokenizer=False)
        LLM(str(tmp_path / "n"))
    with pytest.raises((FileNotFoundError, ModelLoadError), match="nowhere"):
        LLM(str(tmp_path / "nowhere"))


BPE_TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "Hello world! ünïcode 🙂 and <|endoftext|> too",
    "  two  spaces\tand a tab",
]


def write_vocab_and_merges(path: Path) -> Path:
    """A GPT-2-style tokenizer folder: the BPE's vocab.json and merges.txt, no tokenizer.json."""
    path.mkdir(parents=True, exist_ok=True)
    train_bpe().model.save(str(path))
    return path


@pytest.mark.parametrize("named", [False, True], ids=["bare", "class-named"])
def test_a_vocab_and_merges_tokenizer_folder_loads_as_hf_loads_it(tmp_path, named):
    """A folder with only vocab.json + merges.txt was refused ('missing file: tokenizer.json')
    though transformers builds a fast tokenizer from it: with its tokenizer_config naming the
    class (AutoTokenizer), or bare (GPT2TokenizerFast)."""
    from transformers import AutoTokenizer, GPT2TokenizerFast

    from xyserve.tokenizer import Tokenizer

    path = write_vocab_and_merges(tmp_path / "tok")
    if named:
        cfg = {"tokenizer_class": "GPT2Tokenizer", "eos_token": "<|end|>"}
        (path / "tokenizer_config.json").write_text(json.dumps(cfg))
        hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    else:
        hf = GPT2TokenizerFast.from_pretrained(str(path), local_files_only=True)
    tok = Tokenizer(path)
    assert tok.eos_token_id == hf.eos_token_id and tok.vocab_size == len(hf)
    for text in BPE_TEXTS:
        ids = tok.encode(text)
        assert ids == hf.encode(text)
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True)
        assert tok.decode(ids, skip_special_tokens=False) == hf.decode(ids) == text


def test_a_model_with_a_vocab_and_merges_tokenizer_serves_text(tmp_path):
    """End to end: a Llama checkpoint whose tokenizer is vocab.json + merges.txt (AutoTokenizer
    fails there: a Llama tokenizer wants tokenizer.json) takes and returns text."""
    from transformers import GPT2TokenizerFast

    path = write_vocab_and_merges(build_model(tmp_path / "m", "llama", with_tokenizer=False))
    hf = GPT2TokenizerFast.from_pretrained(str(path), local_files_only=True)
    llm = LLM(str(path), max_num_batched_tokens=32, cpu_fused_decode="off")
    sp = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    out = llm.generate(BPE_TEXTS[0], sp)[0]
    assert out.prompt_token_ids == hf.encode(BPE_TEXTS[0])
    assert out.outputs[0].text == hf.decode(out.outputs[0].token_ids, skip_special_tokens=True)
    assert llm.get_tokenizer().encode(BPE_TEXTS[1]) == hf.encode(BPE_TEXTS[1])


def test_a_folder_without_tokenizer_files_names_them(tmp_path):
    from xyserve.tokenizer import Tokenizer

    path = tmp_path / "empty"
    path.mkdir()
    (path / "vocab.json").write_text("{}")  # half of a BPE is not a tokenizer
    with pytest.raises(FileNotFoundError) as e:
        Tokenizer(path)
    for named in (str(path), "tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt"):
        assert named in str(e.value)


@pytest.mark.parametrize(
    "arch,kw",
    [
        ("mistral", dict(sliding_window=8)),
        ("qwen2", dict(use_sliding_window=True, sliding_window=8, max_window_layers=1)),
    ],
)
def test_sliding_window_caps_the_context_to_the_window(tmp_path, arch, kw):
    """Sliding-window attention is not implemented; within the window it is full attention,
    so the context is capped to the window (and a longer max_model_len is refused) rather
    than run past it with full attention, which gives other tokens than HF's."""
    path = build_model(tmp_path / arch, arch, with_tokenizer=False, **kw)
    prompt = [5, 9, 13, 17, 21]
    want = hf_next_tokens(path, prompt, 3)  # 8 tokens: all inside the window
    llm = LLM(str(path), skip_tokenizer_init=True, cpu_fused_decode="off")
    assert llm.llm_engine.max_model_len == 8
    out = llm.generate({"prompt_token_ids": prompt}, SamplingParams(temperature=0, max_tokens=3))
    assert out[0].outputs[0].token_ids == want
    with pytest.raises(ValueError, match="sliding_window"):
        LLM(str(path), skip_tokenizer_init=True, max_model_len=16, cpu_fused_decode="off")


def test_qwen2_window_unused_keeps_full_context(tmp_path):
    path = build_model(tmp_path / "q", "qwen2", with_tokenizer=False, sliding_window=8)
    llm = LLM(str(path), skip_tokenizer_init=True, cpu_fused_decode="off")
    assert llm.llm_engine.max_model_len == 1024


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_untied_model_without_lm_head_is_refused(tmp_path):
    """An untied checkpoint missing ``lm_head.weight`` is incomplete: refused, not run on the
    embedding matrix as if tied (HF would not tie it either)."""
    from safetensors.torch import load_file, save_file

    path = build_model(tmp_path / "m", "llama", with_tokenizer=False)
    weights = load_file(str(path / "model.safetensors"))
    del weights["lm_head.weight"]
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="lm_head.weight"):
        LLM(str(path), skip_tokenizer_init=True, cpu_fused_decode="off")


@pytest.mark.parametrize(
    "changes,tensor",
    [
        (dict(num_key_value_heads=4), "k_proj"),  # the config disagrees with the weights
        (dict(vocab_size=400), "embed_tokens"),
        (dict(intermediate_size=96), "gate_proj"),
    ],
)
def test_weights_of_the_wrong_shape_are_named(tmp_path, changes, tensor):
    path = build_model(tmp_path / "m", "llama", with_tokenizer=False)
    _edit_config(path, **changes)
    with pytest.raises(ModelLoadError, match=tensor):
        LLM(str(path), skip_tokenizer_init=True, cpu_fused_decode="off")


@pytest.mark.parametrize(
    "kw,match",
    [
        # was clamped to one K/V block (max_model_len capped to 16), silently
        (dict(kv_cache_memory_bytes=-5), "kv_cache_memory_bytes"),
        (dict(kv_cache_memory_bytes=0), "kv_cache_memory_bytes"),
        (dict(device="tpu"), "device"),  # was torch's RuntimeError listing its device types
        (dict(device="gpu"), "device"),
        (dict(seed=None), "seed"),  # was "int() argument must be ..."
        (dict(seed=2**70), "seed"),  # was "Overflow when unpacking long long"
        (dict(seed=1.5), "seed"),
    ],
)
def test_invalid_engine_arguments_are_refused_by_name(kw, match):
    from xyserve.config import EngineConfig

    with pytest.raises((ValueError, TypeError), match=match):
        EngineConfig(**kw)


def test_cuda_without_cuda_is_refused_by_name():
    from xyserve.model.loader import resolve_device

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="device"):
        resolve_device("cuda")  # was torch's AssertionError "Torch not compiled with CUDA"


def test_float16_runs_on_the_cpu_meta_attention_path(tmp_path):
    """dtype='float16' on the CPU failed at the first prefill: Meta-Attention's CPU plan
    filled its chunk masks with -1e30, which float16 cannot hold."""
    path = build_model(tmp_path / "m", "llama", with_tokenizer=False)
    prompts = [{"prompt_token_ids": list(range(3, 3 + n))} for n in (3, 40)]
    sp = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    got = {}
    for dtype in ("float32", "float16"):
        llm = LLM(str(path), skip_tokenizer_init=True, dtype=dtype, max_num_batched_tokens=16)
        assert llm.llm_engine.config.attention_backend == "meta"
        got[dtype] = [o.outputs[0].token_ids for o in llm.generate(prompts, sp)]
    assert got["float16"] == got["float32"]


def test_a_torch_dtype_is_taken_as_its_name(tmp_path):
    """``LLM(..., dtype=torch.bfloat16)``, as vLLM takes it, was refused ('dtype must be str')."""
    from xyserve.config import EngineConfig

    path = build_model(tmp_path / "m", "llama", with_tokenizer=False)
    prompts = [{"prompt_token_ids": [5, 6, 7]}, {"prompt_token_ids": list(range(3, 40))}]
    sp = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    got = {}
    for dtype in ("float32", torch.float32, torch.bfloat16):
        llm = LLM(str(path), skip_tokenizer_init=True, dtype=dtype, cpu_fused_decode="off")
        assert llm.llm_engine.config.dtype == str(dtype).removeprefix("torch.")
        assert llm.llm_engine.dtype == {"float32": torch.float32}.get(dtype, dtype)
        got[dtype] = [o.outputs[0].token_ids for o in llm.generate(prompts, sp)]
    assert got[torch.float32] == got["float32"]
    assert all(len(ids) == 6 for ids in got[torch.bfloat16])
    assert EngineConfig(dtype=torch.float16).dtype == "float16"
    with pytest.raises(ValueError, match=r"torch\.int8.*float32, float16, bfloat16"):
        EngineConfig(dtype=torch.int8)
    with pytest.raises(TypeError, match="dtype must be str or a torch dtype"):
        EngineConfig(dtype=16)


@pytest.mark.parametrize(
    "kw,name",
    [
        # each raised "'float' object cannot be interpreted as an integer" (the first one
        # only inside the first step), without saying which argument
        (dict(max_num_batched_tokens=20.5), "max_num_batched_tokens"),
        (dict(max_num_seqs=1.5), "max_num_seqs"),
        (dict(num_kv_blocks=10.5), "num_kv_blocks"),
        (dict(max_model_len=100.5), "max_model_len"),
        (dict(enable_prefix_caching="false"), "enable_prefix_caching"),  # was read as true
        (dict(block_size="16"), "block_size"),
        (dict(tbt_target_ms="300"), "tbt_target_ms"),
    ],
)
def test_engine_arguments_of_the_wrong_type_are_refused_by_name(kw, name):
    from xyserve.config import EngineConfig

    with pytest.raises(TypeError, match=name):
        EngineConfig(**kw)


def test_a_path_object_names_the_model_directory(tmp_path):
    from xyserve.config import EngineConfig

    assert EngineConfig(model=tmp_path, tokenizer=tmp_path).model == str(tmp_path)


def test_malformed_config_and_index_files_are_named(tmp_path):
    """Were a bare JSONDecodeError / KeyError that named neither the file nor the model."""
    path = build_model(tmp_path / "m", "llama", with_tokenizer=False)
    good = (path / "config.json").read_text()
    (path / "config.json").write_text("{bad")
    with pytest.raises(ModelLoadError, match="config.json"):
        LLM(str(path), skip_tokenizer_init=True, cpu_fused_decode="off")
    cfg = json.loads(good)
    del cfg["hidden_size"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="hidden_size"):
        LLM(str(path), skip_tokenizer_init=True, cpu_fused_decode="off")
    (path / "config.json").write_text(good)
    (path / "model.safetensors").rename(path / "model-00001-of-00001.safetensors")
    (path / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(ModelLoadError, match="weight_map"):
        LLM(str(path), skip_tokenizer_init=True, cpu_fused_decode="off")


def test_qwen3_head_dim_defaults_as_in_hf(tmp_path):
    """A Qwen3 config without head_dim means HF's default of 128, not hidden / heads."""
    path = build_model(tmp_path / "q3", "qwen3", with_tokenizer=False, head_dim=128)
    cfg = json.loads((path / "config.json").read_text())
    del cfg["head_dim"]
    (path / "config.json").write_text(json.dumps(cfg))
    want = hf_next_tokens(path, [5, 6, 7], 3)
    llm = LLM(str(path), skip_tokenizer_init=True, cpu_fused_decode="off")
    out = llm.generate({"prompt_token_ids": [5, 6, 7]}, SamplingParams(temperature=0, max_tokens=3))
    assert out[0].outputs[0].token_ids == want


def test_llama_mlp_bias_is_refused(tmp_path):
    """HF's Llama adds MLP biases with mlp_bias; the forward has none, and ran without them."""
    path = build_model(tmp_path / "m", "llama", with_tokenizer=False, mlp_bias=True)
    with pytest.raises(ModelLoadError, match="mlp_bias"):
        LLM(str(path), skip_tokenizer_init=True, cpu_fused_decode="off")


def test_a_max_model_len_the_kv_cache_cannot_hold_is_refused_and_the_models_is_capped(tmp_path):
    """An explicit max_model_len past the cache was capped with a log line: a setting taken
    and not applied. It is refused, as vLLM refuses it; the model's own length (no
    max_model_len given) is still capped to the cache."""
    path = build_model(tmp_path / "m", "llama", with_tokenizer=False)
    args = dict(skip_tokenizer_init=True, num_kv_blocks=4, block_size=16, cpu_fused_decode="off")
    with pytest.raises(ValueError, match="max_model_len=512 needs 32 K/V blocks"):
        LLM(str(path), max_model_len=512, **args)
    assert LLM(str(path), max_model_len=64, **args).llm_engine.max_model_len == 64
    assert LLM(str(path), **args).llm_engine.max_model_len == 64
