"""The models and what is done with them: construction, the training loop, evaluation on held-out
windows, the draft's top-1 agreement with the target, and a greedy sample for the card.

Everything runs in float32 on the CPU; ``bf16_roundtrip`` rounds the weights to what is saved
(bfloat16) before a model is evaluated, so the card's figures describe the shipped weights.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

from .data import Batches

log = logging.getLogger("xyserve.train_tiny")

SAMPLE_PROMPT = "def fibonacci(n):"


@dataclass
class Size:
    hidden: int
    layers: int
    heads: int
    intermediate: int


def make_model(size: Size, vocab_size: int, max_pos: int, eos_id: int, seed: int):
    """A freshly initialised float32 ``LlamaForCausalLM`` (tied embeddings), seeded with ``seed``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=max_pos,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        initializer_range=0.02,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.float()
    return model


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def model_facts(model) -> dict:
    """The card's architecture facts of ``model``: parameter count and shape."""
    cfg = model.config
    return {
        "params": n_params(model),
        "hidden": cfg.hidden_size,
        "layers": cfg.num_hidden_layers,
        "heads": cfg.num_attention_heads,
        "intermediate": cfg.intermediate_size,
    }


@dataclass
class Schedule:
    """Linear warm-up then cosine decay to 10% of the peak ``lr`` over ``steps``.

    With a wall-clock cap (``max_seconds``) the cosine runs on max(step progress, time progress),
    so the learning rate is fully decayed when the cap is reached (a shared CPU may be slower than
    planned). Without a cap (or when it does not bind) it is step-based and the run deterministic.
    """

    lr: float
    steps: int
    max_seconds: float | None
    t0: float
    warmup: int = field(init=False)
    time_bound: bool = False  # the time cap drove the schedule at some step

    def __post_init__(self) -> None:
        self.warmup = max(1, min(100, self.steps // 10))

    def lr_at(self, step: int, progress: float | None = None) -> float:
        """The rate at ``step``; ``progress`` (0..1) overrides the step-based cosine position."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        t = (
            (step - self.warmup) / max(1, self.steps - self.warmup)
            if progress is None
            else progress
        )
        return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    def lr_for(self, step: int) -> float | None:
        """The rate for ``step`` now, or None once the wall-clock cap is reached."""
        progress = None
        if self.max_seconds is not None and step >= self.warmup:
            by_time = (time.time() - self.t0) / self.max_seconds
            by_step = (step - self.warmup) / max(1, self.steps - self.warmup)
            if by_time > by_step:
                progress, self.time_bound = by_time, True
            if by_time >= 1.0:
                return None
        return self.lr_at(step, progress)


def _optimizer(model, lr: float):
    """AdamW with weight decay on matrices only (not on norms)."""
    import torch

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )


def _loss(model, batch, teacher, distill_alpha: float, hard_labels: str = "data"):
    """(training loss, next-token CE against the data). With a teacher the loss is
    ``distill_alpha`` x KL(teacher || model) + the rest x a CE against the data's next token
    (``hard_labels="data"``) or against the teacher's greedy token (``"teacher"``: what greedy
    speculative decoding accepts of a draft)."""
    import torch
    import torch.nn.functional as F

    x, y = batch[:, :-1], batch[:, 1:]
    logits = model(input_ids=x).logits.float()
    flat = logits.reshape(-1, logits.size(-1))
    ce = F.cross_entropy(flat, y.reshape(-1))
    if teacher is None:
        return ce, ce
    with torch.no_grad():
        t_logits = teacher(input_ids=x).logits.float()
    kl = F.kl_div(
        F.log_softmax(flat, -1),
        F.log_softmax(t_logits, -1).reshape(-1, logits.size(-1)),
        log_target=True,
        reduction="batchmean",
    )
    hard = ce if hard_labels == "data" else F.cross_entropy(flat, t_logits.argmax(-1).reshape(-1))
    return (1 - distill_alpha) * hard + distill_alpha * kl, ce


def _optimise(model, opt, batch, teacher, distill_alpha: float, hard_labels: str) -> float:
    """One optimiser step on ``batch`` (gradient norm clipped to 1); returns its next-token CE."""
    import torch

    loss, ce = _loss(model, batch, teacher, distill_alpha, hard_labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return ce.item()


def train_model(
    model,
    batches: Batches,
    *,
    steps: int,
    lr: float,
    seed: int,
    name: str,
    teacher=None,
    distill_alpha: float = 0.5,
    hard_labels: str = "data",
    log_every: int = 10,
    progress: bool = True,
    max_seconds: float | None = None,
) -> dict:
    """AdamW + linear warmup + cosine decay on batches drawn from ``batches``."""
    import torch
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(seed)
    opt = _optimizer(model, lr)
    model.train()
    if teacher is not None:
        teacher.eval()
    sched = Schedule(lr, steps, max_seconds, t0=time.time())
    ema = None
    bar = tqdm(range(steps), desc=f"train {name}", disable=not progress, mininterval=2.0)
    done = 0
    for step in bar:
        step_lr = sched.lr_for(step)
        if step_lr is None:
            log.warning("%s: time cap of %.0fs reached after %d steps", name, max_seconds, step)
            break
        for g in opt.param_groups:
            g["lr"] = step_lr
        ce_v = _optimise(model, opt, batches.draw(gen), teacher, distill_alpha, hard_labels)
        done = step + 1
        ema = ce_v if ema is None else 0.95 * ema + 0.05 * ce_v
        bar.set_postfix(loss=f"{ema:.3f}")
        if step % log_every == 0 or step == steps - 1:
            el = time.time() - sched.t0
            tps = (step + 1) * batches.batch_tokens / max(el, 1e-9)
            log.info(
                "%s step %d/%d ce %.4f (ema %.4f) lr %.2e  %.0f tok/s  %.0fs",
                *(name, step + 1, steps, ce_v, ema, opt.param_groups[0]["lr"], tps, el),
            )
    bar.close()
    model.eval()
    return {
        "steps": done,
        "seconds": time.time() - sched.t0,
        "final_train_loss_ema": ema,
        "time_bound": sched.time_bound,
    }


def bf16_roundtrip(model) -> None:
    """Round the weights to bf16 (what is saved), keeping fp32 compute for evaluation."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())


def evaluate(model, batches) -> float:
    """Mean next-token cross-entropy (nats/token) over ``batches``."""
    import torch
    import torch.nn.functional as F

    tot, n = 0.0, 0
    with torch.no_grad():
        for b in batches:
            x, y = b[:, :-1], b[:, 1:]
            logits = model(input_ids=x).logits.float()
            tot += F.cross_entropy(
                logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum"
            ).item()
            n += y.numel()
    return tot / max(1, n)


def top1_agreement(draft, target, batches) -> float:
    """Share of positions where the draft's greedy next token is the target's."""
    import torch

    agree, n = 0, 0
    with torch.no_grad():
        for b in batches:
            x = b[:, :-1]
            a = draft(input_ids=x).logits.argmax(-1)
            t = target(input_ids=x).logits.argmax(-1)
            agree += int((a == t).sum())
            n += t.numel()
    return agree / max(1, n)


def greedy_sample(model, tok, prompt: str, max_new_tokens: int, eos_id: int) -> str:
    """``prompt`` followed by the model's greedy continuation (special tokens kept)."""
    import torch

    ids = tok.encode(prompt).ids
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos_id,
            pad_token_id=eos_id,
        )
    return prompt + tok.decode(out[0, len(ids) :].tolist(), skip_special_tokens=False)
