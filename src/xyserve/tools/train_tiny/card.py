"""The model card (``README.md``) of a trained model, and reading training facts back from one.

The card's text is the Jinja2 template ``model_card.md.jinja`` next to this module, rendered from
the ``info`` dict a run collects (corpus, shape, training and evaluation facts). The template only
formats; every figure is computed by the run. A model directory written before ``training.json``
existed records its one training phase only in the card, so ``previous_phases`` parses it from
there.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .train import SAMPLE_PROMPT

TEMPLATE = "model_card.md.jinja"


@lru_cache(maxsize=1)
def _template():
    import jinja2

    env = jinja2.Environment(
        autoescape=False,  # Markdown, and samples hold text such as ``<|endoftext|>``
        undefined=jinja2.StrictUndefined,  # a missing fact is an error, not a blank
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["commas"] = lambda n: f"{n:,}"
    env.filters["exp"] = math.exp
    return env.from_string(resources.files(__package__).joinpath(TEMPLATE).read_text())


def render_card(name: str, info: dict) -> str:
    """The card of model ``name`` from the run's facts ``info``."""
    return _template().render(name=name, info=info, sample_prompt=SAMPLE_PROMPT)


def previous_phases(model_dir: Path) -> list[dict]:
    """Training phases of an existing model dir: its ``training.json``, else parsed from its card."""
    record = model_dir / "training.json"
    if record.is_file():
        return json.loads(record.read_text())["phases"]
    card = (model_dir / "README.md").read_text()
    m = re.search(r"- steps: (\d+), batch \d+ x \d+ tokens \(([\d,]+) tokens seen\)", card)
    w = re.search(r"wall time ([\d.]+) min on (\d+) CPU", card)
    lr = re.search(r"peak lr ([\d.e+-]+),", card)
    if not (m and w):
        raise ValueError(f"{model_dir}: no training.json, and its card has no steps / wall time")
    return [
        {
            "steps": int(m[1]),
            "tokens": int(m[2].replace(",", "")),
            "minutes": float(w[1]),
            "threads": int(w[2]),
            "lr": float(lr[1]) if lr else None,
            "time_bound": "time-capped" in card,
        }
    ]
