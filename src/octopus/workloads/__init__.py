"""The shipped workflow suite, as data files (schema octopus-owg/1)."""

from __future__ import annotations

from pathlib import Path

DIR = Path(__file__).parent
SUITE = (
    "video_recognition",
    "recommendation",
    "rag_qa",
    "agent_loop",
    "speech_assistant",
    "driving_perception",
)


def workload_path(name: str) -> Path:
    p = DIR / f"{name}.yaml"
    if not p.exists():
        raise FileNotFoundError(
            f"unknown workflow {name!r} (shipped: {', '.join(list_workloads())})"
        )
    return p


def list_workloads() -> list[str]:
    return sorted(p.stem for p in DIR.glob("*.yaml"))
