"""The fused forward's panel linear layer (kernels.cpu.fused_forward) against numpy, at every
vector width the host runs, in float32 and bfloat16 bits, on one thread and two."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xyserve.kernels.cpu import fused_forward as ff
from xyserve.kernels.cpu import isa as cpu_isa

pytestmark = pytest.mark.skipif(not ff.available(), reason="numba is not installed")

WIDTHS = cpu_isa.host_widths()  # the portable 4 always; 8 and 16 where the CPU runs them


def _bf16_values(a: np.ndarray) -> np.ndarray:
    """``a`` rounded to bfloat16 values (still float32)."""
    return torch.from_numpy(a).to(torch.bfloat16).float().numpy()


# k = 40: tiles of few rows split k into phases; 37: no phase count divides it, the plain ones;
# 1603: several passes go over a panel in chunks of k (PANEL_CHUNK_BYTES), the last one odd
@pytest.mark.parametrize("k", [40, 37, 1603])
@pytest.mark.parametrize("bf16", [False, True], ids=["f32", "bf16"])
@pytest.mark.parametrize("threads,width", [(1, w) for w in WIDTHS] + [(2, WIDTHS[-1])])
def test_panel_linear_equals_matmul(width, threads, bf16, k):
    rng = np.random.default_rng(0)
    p = 2 * width
    n = 3 * p + 5  # a last panel only partly filled
    w = rng.standard_normal((n, k)).astype(np.float32)
    if bf16:
        w = _bf16_values(w)
    packed = ff._panels(ff._bf16_bits(w) if bf16 else w, p)
    assert packed.dtype == (np.uint16 if bf16 else np.float32) and packed.shape == (4, k, p)
    bias = rng.standard_normal(n).astype(np.float32)
    linear = ff._linear_c_par if threads > 1 else ff._linear_c
    assert k < 1000 or k * p * packed.itemsize > ff.PANEL_CHUNK_BYTES  # chunks at 1603
    # float32 sums of k terms drift from the float64 reference by about eps sqrt(k) times the
    # partial sums' size (~sqrt(k) here), in whatever order the chunks add them: a wrong row,
    # column or chunk is off by O(1)
    atol = 1e-4 * max(1.0, k / 400)
    # every tile height, and several passes over a panel
    for rows in range(1, 2 * ff.panel_rows(width) + 2):
        x = rng.standard_normal((rows, k)).astype(np.float32)
        want = x.astype(np.float64) @ w.T.astype(np.float64)
        out = np.full((rows, n), np.nan, np.float32)
        linear(x, packed, bias[:0], out, False, threads)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=atol, err_msg=f"{rows} rows")
        base = rng.standard_normal((rows, n)).astype(np.float32)
        out = base.copy()
        linear(x, packed, bias, out, True, threads)  # a residual add, with a bias
        np.testing.assert_allclose(out, base + want + bias, rtol=1e-5, atol=atol)


def test_the_forward_equals_hf_at_every_width():
    import transformers

    from xyserve.model.loader import load_model
    from xyserve.models import DEFAULT_DRAFT_MODEL, resolve_model
    from xyserve.spec.draft_forward import pack_model

    path = resolve_model(DEFAULT_DRAFT_MODEL)
    model = load_model(path, torch.device("cpu"), torch.float32)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    n = 21  # in blocks of 16, two whole key tiles and a remainder: the score tile's case
    pos = np.arange(n, dtype=np.int64)
    with torch.no_grad():  # every position's logits of the n tokens, causal
        want = hf(torch.from_numpy(pos + 3)[None]).logits[0].numpy()
    for width in WIDTHS:
        w = pack_model(model, width=width)
        assert w.qkv.shape[-1] == 2 * width
        for bs in (4, 16):
            table = np.arange(-(-n // bs), dtype=np.int64)[None]
            rows = ff.Rows(
                ids=pos + 3, pos=pos, slots=pos.copy(), table_of=np.zeros(n, np.int64),
                tables=table, ctx_len=pos + 1, extra_off=np.zeros(n + 1, np.int64),
                extra_slots=np.zeros(0, np.int64), out_rows=pos,
            )  # fmt: skip
            k, v = ff.new_cache(w, table.shape[1], bs)
            logits, argmax = ff.forward(w, k, v, rows)
            np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4, err_msg=f"{width} {bs}")
            assert argmax.tolist() == logits.argmax(-1).tolist()


@pytest.mark.parametrize("width", [2, 5, 32])
def test_a_width_no_tile_was_compiled_for_is_refused(width):
    """The panel tiles exist for widths 4, 8 and 16 only: any other would leave the linear
    layers' outputs unwritten (their biases only), so packing for it is an error."""
    rng = np.random.default_rng(0)
    h, d = 8, 4
    layer = {
        "input_norm": np.ones(h, np.float32), "post_norm": np.ones(h, np.float32),
        "qkv": rng.standard_normal((3 * d, h)).astype(np.float32), "qkv_bias": None,
        "o": rng.standard_normal((h, d)).astype(np.float32), "o_bias": None,
        "gate_up": rng.standard_normal((2 * h, h)).astype(np.float32),
        "down": rng.standard_normal((h, h)).astype(np.float32), "q_norm": None, "k_norm": None,
    }  # fmt: skip
    embed = rng.standard_normal((16, h)).astype(np.float32)
    cos = np.ones((8, d), np.float32)
    with pytest.raises(ValueError, match="width"):
        ff.pack(embed, embed, np.ones(h, np.float32), [layer], cos, cos, 1, 1, d, 1e-5, width=width)


# ---- AMX panels (kernels.cpu.amx): a bfloat16 engine's linear layers on AMX hosts ---------
def _amx_ok() -> bool:
    from xyserve.kernels.cpu import amx

    return amx.available()


def test_amx_panels_lay_out_b_tiles():
    """Weight (n, k) sits in panel n // 32, block k // 32, half (n % 32) // 16, pair row
    (k % 32) // 2, column pair n % 16, slot k % 2: AMX's B-tile layout, checked element by
    element against that formula (zero past N and K). Layout only: runs on any host."""
    from xyserve.kernels.cpu import amx

    rng = np.random.default_rng(1)
    n, k = 50, 70
    bits = rng.integers(1, 60000, (n, k)).astype(np.uint16)
    p = amx.panels(bits)
    assert p.shape == (2, 96, 32)
    blocks = p.reshape(2, 3, 2, 16, 16, 2)  # panel, block, half, pair row, column, slot
    for i in range(64):
        for j in range(96):
            want = bits[i, j] if i < n and j < k else 0
            got = blocks[i // 32, j // 32, (i % 32) // 16, (j % 32) // 2, i % 16, j % 2]
            assert got == want, (i, j)


@pytest.mark.skipif(not _amx_ok(), reason="no AMX here (or XYSERVE_AMX=0)")
@pytest.mark.parametrize("threads", [1, 2])
def test_amx_panel_linear_equals_matmul_of_bfloat16_inputs(threads):
    """The linear layer over AMX panels: AMX tiles from AMX_MIN_ROWS rows, the FMA tile that
    reads the same panels below (every tile height, its k phases, and chunks of k at K =
    1600), both on the inputs rounded to bfloat16; against numpy on those inputs."""
    rng = np.random.default_rng(0)
    linear = ff._linear_amx_par if threads > 1 else ff._linear_amx_c
    for k in (64, 1600):
        n = 3 * 32 + 5  # a last panel only partly filled
        w = _bf16_values(rng.standard_normal((n, k)).astype(np.float32))
        packed = ff._amx_panels(ff._bf16_bits(w))
        bias = rng.standard_normal(n).astype(np.float32)
        for rows in [*range(1, ff.AMX_MIN_ROWS + 3), 16, 17, 33, 40]:
            x = rng.standard_normal((rows, k)).astype(np.float32)
            want = _bf16_values(x).astype(np.float64) @ w.T.astype(np.float64)
            out = np.full((rows, n), np.nan, np.float32)
            linear(x, packed, bias[:0], out, False, threads)
            np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4, err_msg=f"{rows}x{k}")
            base = rng.standard_normal((rows, n)).astype(np.float32)
            out = base.copy()
            linear(x, packed, bias, out, True, threads)  # a residual add, with a bias
            np.testing.assert_allclose(out, base + want + bias, rtol=1e-5, atol=1e-4)


def test_amx_round_row_rounds_as_torch():
    """``amx.round_row`` (16 values a step, to bfloat16 bits or to their float32 values)
    against torch's ``.to(torch.bfloat16)``: ties to even, the largest finite values rounding
    to infinity, infinities, -0.0, subnormals, and NaN (a NaN stays a NaN: torch writes 0x7FC0
    for every one, ``round_row`` keeps the sign and payload). Runs wherever numba does: it is
    vector integer arithmetic, not an AMX instruction."""
    from numba import njit

    from xyserve.kernels.cpu import amx

    special = np.array(
        [
            0x3F808000, 0x3F818000, 0x3F808001, 0x3F817FFF, 0xBF808000, 0xBF818000,  # ties
            0x7F7FFFFF, 0x7F7F8000, 0xFF7F8000, 0x7F7F7FFF,  # to and short of infinity
            0x7F800000, 0xFF800000, 0x80000000, 0x00000000,  # infinities, -0.0, 0.0
            0x00000001, 0x00008000, 0x00018000, 0x807FFFFF, 0x007F8000,  # subnormals
            0x7F800001, 0x7FC00000, 0xFFC00001, 0x7FFFFFFF, 0xFF80FFFF,  # NaNs
        ],
        np.uint32,
    )  # fmt: skip
    rng = np.random.default_rng(3)
    lead = np.full(16, 0x3F800000, np.uint32)  # skipped by the offset below
    random = rng.integers(0, 2**32, 64 * 16 - 16 - special.size, np.uint32)
    bits = np.concatenate([lead, special, random])
    x = bits.view(np.float32)
    want = torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)

    @njit
    def run(x, a, off):
        amx.round_row(x, off, a, off, x.shape[0] - off)

    half = np.zeros(x.size, np.uint16)
    wide = np.full(x.size, 7.0, np.float32)
    run(x, half, 16)  # from an offset: the first 16 untouched
    run(x, wide, 16)
    nan = np.isnan(x[16:])
    assert (half[:16] == 0).all() and (wide[:16] == 7.0).all()
    got = half[16:]
    assert (got[~nan] == want[16:][~nan]).all()
    assert np.isnan(_widen(got[nan])).all()
    assert (wide[16:].view(np.uint32)[~nan] == want[16:][~nan].astype(np.uint32) << 16).all()
    assert np.isnan(wide[16:][nan]).all()


def _widen(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


@pytest.mark.skipif(not _amx_ok(), reason="no AMX here (or XYSERVE_AMX=0)")
def test_amx_panel_linear_random_shapes():
    """Random shapes through both compilations of the linear layer over AMX panels: 1-40 rows
    (AMX tiles from AMX_MIN_ROWS, the FMA tile below), N not a multiple of 32, K of one to 50
    blocks, with and without a bias and a residual add, and an ``x`` with more rows than
    ``out`` (only the first ``out.shape[0]`` are read); against numpy in float64 on the
    bfloat16-rounded inputs."""
    rng = np.random.default_rng(7)
    for trial in range(24):
        rows = int(rng.integers(1, 41))
        n = 32 * int(rng.integers(0, 5)) + int(rng.integers(1, 32))
        k = [32, 64, 96, 1600][trial % 4]
        threads = 1 + trial % 2
        linear = ff._linear_amx_par if threads > 1 else ff._linear_amx_c
        w = _bf16_values(rng.standard_normal((n, k)).astype(np.float32))
        packed = ff._amx_panels(ff._bf16_bits(w))
        x = rng.standard_normal((rows + int(rng.integers(0, 3)), k)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32) if trial % 3 else np.zeros(0, np.float32)
        want = _bf16_values(x[:rows]).astype(np.float64) @ w.T.astype(np.float64)
        if bias.size:
            want += bias
        accumulate = bool(rng.integers(0, 2))
        base = rng.standard_normal((rows, n)).astype(np.float32)
        out = base.copy() if accumulate else np.full((rows, n), np.nan, np.float32)
        linear(x, packed, bias, out, accumulate, threads)
        if accumulate:
            want += base
        what = f"rows {rows} n {n} k {k} threads {threads} acc {accumulate} bias {bias.size}"
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4, err_msg=what)


@pytest.mark.skipif(not _amx_ok(), reason="no AMX here (or XYSERVE_AMX=0)")
def test_kpair_fma_tile_over_several_passes_and_chunks():
    """The FMA tile over AMX panels (``gemm.make_tile(kpair=True)``) past ``panel_rows``
    rows: several passes over a panel, each chunk of k (PANEL_CHUNK_BYTES) read by the
    streaming-prefetch tiles. ``_linear_amx`` hands such row counts to AMX, so only a direct
    call reaches this code; against numpy on the same (already bfloat16) inputs."""
    rng = np.random.default_rng(11)
    n, k = 3 * 32 + 7, 1600
    w = _bf16_values(rng.standard_normal((n, k)).astype(np.float32))
    packed = ff._amx_panels(ff._bf16_bits(w))
    assert k * 32 * 2 > ff.PANEL_CHUNK_BYTES  # chunks of k
    for rows in (ff.panel_rows(16) + 1, 2 * ff.panel_rows(16) + 1, 3 * ff.panel_rows(16) - 1):
        x = _bf16_values(rng.standard_normal((rows, k)).astype(np.float32))
        want = x.astype(np.float64) @ w.T.astype(np.float64)
        for linear, threads in ((ff._linear_kp_c, 1), (ff._linear_kp_par, 2)):
            out = np.full((rows, n), np.nan, np.float32)
            linear(x, packed, np.zeros(0, np.float32), out, False, threads)
            np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4, err_msg=f"{rows}")


@pytest.mark.skipif(not _amx_ok(), reason="no AMX here (or XYSERVE_AMX=0)")
def test_amx_is_off_where_numba_compiles_without_it(monkeypatch):
    """``NUMBA_CPU_NAME=generic`` (numba's setting for caches shared between machines) or a
    ``NUMBA_CPU_FEATURES`` without AMX: numba's LLVM then cannot select the tile intrinsics
    and aborts the whole process on the first AMX kernel (an LLVM fatal error, not an
    exception), so AMX must count as unavailable there, though the CPU has it."""
    from numba.core import config

    from xyserve.kernels.cpu import amx

    for features in ("", "+avx512f,+avx512bw,-amx-tile,-amx-bf16", "+amx-tile,-amx-bf16"):
        monkeypatch.setattr(config, "CPU_FEATURES", features)
        monkeypatch.setattr(amx, "_state", None)
        assert not amx.available(), features
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx512f,+amx-tile,+amx-bf16")
    monkeypatch.setattr(amx, "_state", None)
    assert amx.available()
