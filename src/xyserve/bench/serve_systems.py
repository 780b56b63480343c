"""The systems ``bench serve`` measures: one ``xyserve serve`` per ``--system NAME=ENGINE_ARGS``
and one peer server per ``--peer NAME`` (``bench.serve_peers``), started on free loopback ports
one at a time before the first run, or a running ``--base-url``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import httpx

from xyserve.bench.offline_workload import build_random_model, packaged
from xyserve.bench.serve_peers import TextPrompts, peer_command, write_id_tokenizer
from xyserve.bench.serve_server import ServerProcess, check_loopback
from xyserve.models import resolve_model

DEFAULT_SYSTEMS = ("hybrid=--scheduler-policy hybrid", "baseline=--scheduler-policy baseline")


@dataclass
class System:
    label: str
    base_url: str
    server: ServerProcess | None = None
    text: TextPrompts | None = None  # a peer that takes prompts as text only: their tokenizer
    logprobs: bool = True  # False: a peer that streams none (one token per chunk)
    ignore_eos: bool = True  # False: a peer that refuses vLLM's ignore_eos


def model_config(model: str) -> tuple[Path | None, dict[str, Any] | None]:
    """(an HF config JSON to build random weights from, or None; the model's config dict)."""
    cand = [Path(model), packaged("models", model)]
    for c in cand:
        if c.is_file() and c.suffix == ".json":
            return c, json.loads(c.read_text())
    for c in [Path(model), Path(str(resources.files("xyserve") / "models" / model))]:
        if (c / "config.json").is_file():
            return None, json.loads((c / "config.json").read_text())
    return None, None


def served_config(base_url: str) -> dict[str, Any] | None:
    """The config of the model a running server serves, read from the folder its /v1/models
    names as ``root`` (xyserve and vLLM list it; the server is on loopback, so the folder is
    on this machine); None where it cannot be read."""
    try:
        data = httpx.get(f"{base_url}/v1/models", timeout=10.0).json()["data"]
        root = data[0]["root"]
        return model_config(root)[1] if isinstance(root, str) and root else None
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError, OSError):
        return None


def start_systems(
    args: argparse.Namespace, scratch: Path
) -> tuple[list[System], str, dict[str, Any] | None]:
    """Start (or reach) every system; returns them, the model served (a bundled name resolved
    to its directory where a peer needs one), and its config.

    A random-weight model is built under ``scratch`` (the caller removes it).
    """
    peers = getattr(args, "peer", None) or []
    if args.base_url is not None:
        if peers:
            raise ValueError("--peer starts its own server: it does not go with --base-url")
        url = check_loopback(args.base_url)
        return [System(args.label, url)], args.model, served_config(url)
    build_from, cfg = model_config(args.model)
    model = args.model
    extra: list[str] = []
    if build_from is not None:
        print(f"building a random-weight model from {build_from} ...", file=sys.stderr)
        model = str(build_random_model(build_from, scratch / "model", args.seed))
        extra = ["--skip-tokenizer-init"]
        if peers:  # text prompts that tokenize back to the very ids xyserve gets
            assert cfg is not None
            write_id_tokenizer(Path(model), int(cfg["vocab_size"]))
    text = None
    if peers:
        # a bundled name is a directory to the peer (which would look the name up online); a
        # model without a tokenizer is refused before any server starts
        model = str(resolve_model(model))
        text = TextPrompts(model)
    specs = args.system or list(DEFAULT_SYSTEMS)
    systems: list[System] = []
    try:
        for spec in specs:
            label, sep, flags = spec.partition("=")
            if not sep or not label:
                raise ValueError(f"--system {spec!r}: expected NAME=ENGINE_ARGS")
            if label in (s.label for s in systems):
                raise ValueError(f"--system {label!r} given twice")
            eng = shlex.split(args.engine_args) + shlex.split(flags) + extra
            srv = ServerProcess(model, eng, args.threads, args.startup_timeout)
            print(f"starting {label}: xyserve serve {model} {' '.join(eng)}", file=sys.stderr)
            # one at a time: a server times its CPU paths at start (the fused decode call's
            # step sizes), which another server starting beside it would skew
            systems.append(System(label, "", srv.launch()))
            systems[-1].base_url = srv.wait().base_url
        for name in peers:
            if name in (s.label for s in systems):
                raise ValueError(f"--peer {name!r}: a system of that name is already given")
            srv = ServerProcess(
                model,
                threads=args.threads,
                startup_timeout_s=args.startup_timeout,
                command_for=lambda port, n=name: peer_command(n, model, port, args.peer_args),
            )
            peer = System(name, "", srv.launch(), text=text, logprobs=False, ignore_eos=False)
            systems.append(peer)
            print(f"starting {name}: {' '.join(srv.cmd)}", file=sys.stderr)
            peer.base_url = srv.wait().base_url
    except BaseException:
        stop_systems(systems)
        raise
    return systems, model, cfg


def stop_systems(systems: list[System]) -> None:
    for s in systems:
        if s.server is not None:
            s.server.stop()
