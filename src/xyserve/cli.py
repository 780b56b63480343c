"""``xyserve`` command line: serve, bench offline, bench serve, bench kernels, bench grammar, tune,
train-tiny, token-map."""

from __future__ import annotations

import importlib
import sys

# subcommand -> "module:function"; each function takes the remaining argv.
COMMANDS: dict[str, str] = {
    "serve": "xyserve.server.cli:main",
    "bench offline": "xyserve.bench.offline:main",
    "bench serve": "xyserve.bench.serve:main",
    "bench kernels": "xyserve.bench.kernels:main",
    "bench grammar": "xyserve.bench.grammar:main",
    "bench spec": "xyserve.bench.spec:main",
    "tune": "xyserve.tools.tune:main",
    "train-tiny": "xyserve.tools.train_tiny:main",
    "token-map": "xyserve.spec.token_map:main",
}

USAGE = (
    "usage: xyserve {" + ",".join(COMMANDS) + "} [options]  (add --help to a command)\n"
    "       xyserve --version"
)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv in (["--version"], ["-v"]):  # as ``vllm --version``
        from xyserve import __version__

        print(__version__)
        return 0
    for words in sorted(COMMANDS, key=lambda c: -len(c.split())):
        n = len(words.split())
        if argv[:n] == words.split():
            mod, _, fn = COMMANDS[words].partition(":")
            rc = getattr(importlib.import_module(mod), fn)(argv[n:])
            return int(rc or 0)
    print(USAGE, file=sys.stderr)
    # help asked of the command or of a group of commands (``xyserve bench --help``)
    words, flag = argv[:-1], argv[-1:]
    group = any(c.split()[: len(words)] == words for c in COMMANDS)
    return 0 if flag in (["-h"], ["--help"]) and group else 2


if __name__ == "__main__":
    raise SystemExit(main())
