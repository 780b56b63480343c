"""The attention baselines that ``bench kernels``'s GPU section runs beside Meta-Attention.

Each peer turns one benchmark case (a step's P/D/V stages over a paged K/V cache) into a
callable that computes the step's attention output, with all per-step preparation done up
front (as the engine plans once per step); ``prep`` says what that preparation is, so a report
can show the kernel alone and the kernel with its preparation.

* ``per_stage_triton`` -- the Triton tutorial kernel, one launch per stage on gathered K/V
  (``triton_baselines``): launch-bound, kept as the weak reference.
* ``per_stage_type`` -- one launch per stage *type* (prefill, decode, verify), the stages of a
  type batched in one grid of one program per (tile, KV head) reading the paged cache directly,
  as a varlen kernel runs them. It uses Meta-Attention's own tile code, so its gap to
  Meta-Attention is exactly what the single launch and the snake-dealt persistent workers win.
* ``flex`` -- PyTorch FlexAttention (compiled on CUDA) over the step's K/V **gathered** into one
  contiguous sequence, with a block mask expressing every stage's causal, prefix and tree rules
  through a ``mask_mod``. The gather and the block mask are the preparation.
* ``flash_attn`` / ``flashinfer`` -- hooks: not installable on this project's machines, so they
  report ``not installed``. A peer plugs in by adding a ``Peer`` to ``PEERS`` whose ``prepare``
  returns the callable (and, for the report, its preparation callable).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch

from xyserve.bench.cases import AttentionCase
from xyserve.kernels.attention.gather import gather_kv


@dataclass
class Prepared:
    run: Callable[[], torch.Tensor]  # the kernel(s) alone
    prep: Callable[[], object] | None = None  # the per-step preparation it needs, if any


@dataclass
class Peer:
    name: str
    prepare: Callable[..., Prepared]
    requires: str | None = None  # a module that must be importable

    def available(self) -> bool:
        return self.requires is None or importlib.util.find_spec(self.requires) is not None


def _per_stage_triton(c: AttentionCase, hq: int, hkv: int, d: int, **kw) -> Prepared:
    from xyserve.bench.triton_baselines import per_stage_triton_attention, plan_per_stage

    sp = plan_per_stage(c.meta)
    bm, bn = kw.get("block_m", 64), kw.get("block_n", 64)
    return Prepared(
        lambda: per_stage_triton_attention(sp, c.q, c.k_cache, c.v_cache, c.scale, bm, bn),
        lambda: plan_per_stage(c.meta),
    )


# The per-unit columns of a Triton Meta-Attention plan (the rest are shared tables).
UNIT_COLUMNS = ("qstart", "rows", "rowoff", "ctx", "kvlen", "ext", "kvh", "stage", "toff", "tn")


def _per_stage_type(c: AttentionCase, hq: int, hkv: int, d: int, **kw) -> Prepared:
    from xyserve.kernels.attention.meta.triton_kernel import triton_meta_attention
    from xyserve.plan.triton_attention import build_triton_plan

    def plans():
        full = build_triton_plan(c.meta, hq, hkv, d, num_workers=1)
        kinds = [r.kind.value for r in c.meta.table.rows]
        stage_of_unit = full.arrays["stage"].tolist()
        out = []
        for kind in dict.fromkeys(kinds):  # one launch per stage type present
            idx = [u for u, s in enumerate(stage_of_unit) if kinds[s] == kind]
            if not idx:
                continue
            sel = torch.tensor(idx, dtype=torch.long, device=full.arrays["stage"].device)
            arrays = {
                k: (v.index_select(0, sel) if k in UNIT_COLUMNS else v)
                for k, v in full.arrays.items()
                if k != "w_off"
            }
            # One program per unit: a plain (non-persistent) grid, as a varlen kernel launches.
            arrays["w_off"] = torch.arange(len(idx) + 1, dtype=torch.int32, device=sel.device)
            out.append(dataclasses.replace(full, arrays=arrays))
        return out

    ps = plans()

    def run() -> torch.Tensor:
        out = torch.zeros_like(c.q)
        for p in ps:
            triton_meta_attention(p, c.q, c.k_cache, c.v_cache, c.scale, out=out)
        return out

    return Prepared(run, plans)


def flex_inputs(c: AttentionCase, pad_q: int = 1, pad_kv: int = 1) -> dict:
    """The step as one query sequence against one gathered K/V sequence, with per-position
    stage ids and positions for the mask; lengths padded up to multiples of ``pad_q``/``pad_kv``
    (padding belongs to no stage, so it is masked out) to bound the shapes a compiler sees."""
    dev = c.q.device
    rows = c.meta.table.rows
    t = c.q.shape[0]
    ks, vs, kv_stage, kv_pos = [], [], [], []
    q_stage = torch.full((t,), -1, dtype=torch.int32)
    q_pos = torch.zeros(t, dtype=torch.int32)
    q_ctx = torch.zeros(t, dtype=torch.int32)
    q_toff = torch.full((t,), -1, dtype=torch.int32)
    q_tn = torch.zeros(t, dtype=torch.int32)
    tree_flat: list[bool] = []
    for s, (row, tree) in enumerate(zip(rows, c.meta.tree_masks)):
        if row.num_tokens == 0:
            continue
        ctx = row.kv_len - row.num_tokens
        ks.append(gather_kv(c.k_cache, row.block_table, row.kv_len))
        vs.append(gather_kv(c.v_cache, row.block_table, row.kv_len))
        kv_stage += [s] * row.kv_len
        kv_pos += list(range(row.kv_len))
        sl = slice(row.start, row.start + row.num_tokens)
        q_stage[sl] = s
        q_pos[sl] = torch.arange(ctx, row.kv_len, dtype=torch.int32)
        q_ctx[sl] = ctx
        if tree is not None:
            n = row.num_tokens
            q_toff[sl] = torch.arange(n, dtype=torch.int32) * n + len(tree_flat)
            q_tn[sl] = n
            tree_flat += tree.flatten().tolist()
    k = torch.cat(ks) if ks else c.k_cache.new_zeros((0, *c.k_cache.shape[2:]))
    v = torch.cat(vs) if vs else c.v_cache.new_zeros((0, *c.v_cache.shape[2:]))
    s_len = -(-max(1, k.shape[0]) // pad_kv) * pad_kv
    t_len = -(-t // pad_q) * pad_q
    kv_stage_t = torch.full((s_len,), -2, dtype=torch.int32)
    kv_stage_t[: len(kv_stage)] = torch.tensor(kv_stage, dtype=torch.int32)
    kv_pos_t = torch.zeros(s_len, dtype=torch.int32)
    kv_pos_t[: len(kv_pos)] = torch.tensor(kv_pos, dtype=torch.int32)

    def pad_rows(x: torch.Tensor, n: int, fill: int = 0) -> torch.Tensor:
        extra = torch.full((n - x.shape[0], *x.shape[1:]), fill, dtype=x.dtype, device=x.device)
        return torch.cat([x, extra])

    return {
        "q": pad_rows(c.q, t_len).transpose(0, 1)[None],  # [1, Hq, T, D]
        "k": pad_rows(k, s_len).transpose(0, 1)[None],  # [1, Hkv, S, D]
        "v": pad_rows(v, s_len).transpose(0, 1)[None],
        "q_stage": pad_rows(q_stage, t_len, -1).to(dev),
        "q_pos": pad_rows(q_pos, t_len).to(dev),
        "q_ctx": pad_rows(q_ctx, t_len).to(dev),
        "q_toff": pad_rows(q_toff, t_len, -1).to(dev),
        "q_tn": pad_rows(q_tn, t_len).to(dev),
        "kv_stage": kv_stage_t.to(dev),
        "kv_pos": kv_pos_t.to(dev),
        "tree": torch.tensor(tree_flat or [False], dtype=torch.bool, device=dev),
        "num_tokens": t,
    }


def flex_mask_mod(f: dict) -> Callable:
    """The step's attention rule for FlexAttention: same stage, then causal by position, or
    history plus the tree's bits for the rows of a tree-verify stage."""
    q_stage, q_pos, q_ctx, q_toff, q_tn = (
        f[k] for k in ("q_stage", "q_pos", "q_ctx", "q_toff", "q_tn")
    )
    kv_stage, kv_pos, tree = f["kv_stage"], f["kv_pos"], f["tree"]
    last = tree.numel() - 1

    def mask_mod(b, h, qi, ki):
        same = q_stage[qi] == kv_stage[ki]
        kp = kv_pos[ki]
        causal = kp <= q_pos[qi]
        rel = kp - q_ctx[qi]
        bit = tree[torch.clamp(q_toff[qi] + rel, 0, last)]
        tree_ok = (rel < 0) | ((rel < q_tn[qi]) & bit)
        return same & torch.where(q_toff[qi] >= 0, tree_ok, causal)

    return mask_mod


_FLEX_COMPILED: dict[str, Callable] = {}


def _flex(c: AttentionCase, hq: int, hkv: int, d: int, **kw) -> Prepared:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    dev = c.q.device
    fn = flex_attention
    if dev.type == "cuda":  # eager FlexAttention is a slow reference; compiled is the peer
        fn = _FLEX_COMPILED.setdefault("fn", torch.compile(flex_attention, dynamic=False))
    pad_q, pad_kv = kw.get("flex_pad", (1, 1))

    def prep():
        f = flex_inputs(c, pad_q, pad_kv)
        bm = create_block_mask(
            flex_mask_mod(f), 1, None, f["q"].shape[2], f["k"].shape[2], device=str(dev)
        )
        return f, bm

    f, bm = prep()

    def run() -> torch.Tensor:
        o = fn(f["q"], f["k"], f["v"], block_mask=bm, scale=c.scale, enable_gqa=hq != hkv)
        out = o[0].transpose(0, 1)[: f["num_tokens"]]
        return torch.where((f["q_stage"][: f["num_tokens"]] >= 0)[:, None, None], out, 0)

    return Prepared(run, prep)


def _not_installed(c: AttentionCase, hq: int, hkv: int, d: int, **kw) -> Prepared:
    raise NotImplementedError("no adapter written: this peer was never installable here")


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer("per_stage_triton", _per_stage_triton),
        Peer("per_stage_type", _per_stage_type),
        Peer("flex", _flex),
        Peer("flash_attn", _not_installed, requires="flash_attn"),
        Peer("flashinfer", _not_installed, requires="flashinfer"),
    )
}
