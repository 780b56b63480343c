"""Train the bundled tiny model pair (``xy-tiny`` target + ``xy-tiny-draft``) on this machine.

The corpus is the Python standard library's own sources (found with ``sysconfig``), split
deterministically into train and held-out files by a hash of each file's relative path. A
byte-level BPE tokenizer is trained with ``tokenizers``; then two ``LlamaForCausalLM`` models that
share it are trained with plain PyTorch/AdamW: first the target, then a several times smaller
draft (optionally distilled from the target). Each model is written as an HF-format directory
(``config.json``, bf16 ``model.safetensors``, tokenizer files, ``generation_config.json`` and a
model card ``README.md``). Directories are written to a temporary sibling and renamed at the end,
so a partially written model never appears at the output path.

Usage::

    python -m xyserve.tools.train_tiny --out src/xyserve/models
    xyserve train-tiny --out /tmp/tiny --max-files 20 --steps 5 --vocab-size 300 ...

Continuing an existing target (same tokenizer and architecture, the draft is left as it is)::

    python -m xyserve.tools.train_tiny --resume-target src/xyserve/models/xy-tiny \\
        --out /tmp/resumed --max-minutes 40 --threads 1

``--resume-target DIR`` loads DIR's bf16 weights (trained in float32), reuses DIR's tokenizer files
byte for byte, skips draft training, runs a fresh warm-up + cosine schedule for ``--steps`` /
``--max-minutes`` on differently seeded windows, and evaluates held-out loss and the draft's top-1
agreement (draft from ``--resume-draft``, default: DIR's sibling ``--draft-name``) on the same
held-out windows as a fresh run. The card lists every training phase (kept in ``training.json``).

Continuing the bundled draft against its target (distillation)::

    python -m xyserve.tools.train_tiny --distill-draft src/xyserve/models/xy-tiny-draft \\
        --out /tmp/distilled --distill-alpha 0.5 --draft-max-minutes 30 --threads 1

``--distill-draft DIR`` trains DIR's weights one more phase against the target (``--teacher``,
default DIR's sibling ``--target-name``): a KL to the target's logits plus a cross-entropy
against its greedy token, on train windows and on the target's own greedy continuations
(``--greedy-share``, ``--greedy-prompts``). See ``distill``.

Modules, in the order a run uses them:

- ``corpus``: the stdlib sources and their train / held-out split;
- ``tokenizer``: the shared BPE tokenizer, its HF config files, encoding into a token stream;
- ``data``: the run's token streams, training and held-out windows, the facts every card shares;
- ``train``: model construction, the training loop, evaluation, agreement, greedy sampling;
- ``run``: those steps with the command line's settings, as every model of a run goes through;
- ``draft``: training the draft, in this process or a forked one (``--parallel``);
- ``pair`` (a fresh run), ``resume`` (``--resume-target``) and ``distill`` (``--distill-draft``);
- ``card`` (+ ``model_card.md.jinja``) and ``model_dir``: the card and the atomic directory writer;
- ``cli``: the flags and ``main``.
"""

from __future__ import annotations

from .card import previous_phases, render_card
from .cli import main, parse_args
from .corpus import Corpus, build_corpus
from .model_dir import save_model_dir
from .tokenizer import train_tokenizer
from .train import Size, make_model, train_model

__all__ = [
    "Corpus",
    "Size",
    "build_corpus",
    "main",
    "make_model",
    "parse_args",
    "previous_phases",
    "render_card",
    "save_model_dir",
    "train_model",
    "train_tokenizer",
]
