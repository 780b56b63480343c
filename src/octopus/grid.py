"""Grid sweeps: a YAML grid of runs, run on a process pool or on Ray, one tidy row per run.

A grid file (`schema: octopus-sweep/1`) names lists to cross:

    workflows: [recommendation, video_recognition]   # suite names or paths
    architectures: [chip, chiplet]                     # names or paths
    schedulers: [octopus, reactive, path/to/file.py:MyScheduler]
    levels: [high]                                     # optional, default [high]
    seeds: [0, 1, 2]                                   # optional, default [0]
    rates: [closed, 2.0]                               # optional: closed loop, or instances/ms
    instances: 24                                      # optional, per run

Every finished run is appended to `rows.jsonl` in the output folder at once, so an
interrupted sweep resumes by skipping the runs already there. A row carries a
`fingerprint` of what determines it beyond its parameters (the contents of its workflow
and architecture files, its plugin scheduler's file, octopus's version and code): a resume
reuses a row only when its fingerprint still matches, and reruns the stale ones. At the
end the rows are written in grid order as `rows.csv` (and `rows.parquet` when pyarrow is
installed): every parameter and every metric, one row per run.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from tqdm import tqdm

from octopus.checks import check_seed, positive_finite, read_document, refuse_repeats, shown
from octopus.owg.schema import MAX_INSTANCES
from octopus.report.metrics import json_safe

SCHEMA = "octopus-sweep/1"
LISTS = ("workflows", "architectures", "schedulers", "levels", "seeds", "rates")
DEFAULTS = {"levels": ["high"], "seeds": [0], "rates": ["closed"]}
SCALARS = ("instances",)
PARAMS = ("workflow", "arch", "scheduler", "level", "seed", "rate_per_ms", "instances")


def parse_grid(doc, where: str = "sweep grid") -> dict:
    """Validate a grid document's shape; a bad one gets a message naming `where` (the file,
    from `load_grid`) and the key. The names it lists are resolved by `check_names`."""
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: expected a mapping at the top level")
    if doc.get("schema", SCHEMA) != SCHEMA:
        raise ValueError(f"{where}: field 'schema': expected {SCHEMA!r}, got {doc['schema']!r}")
    unknown = set(doc) - set(LISTS) - set(SCALARS) - {"schema"}
    if unknown:  # all of them at once
        names = ", ".join(repr(k) for k in sorted(unknown, key=str))
        raise ValueError(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {names} "
            f"(keys: {', '.join((*LISTS, *SCALARS))})"
        )
    g: dict = {}
    for key in LISTS:
        v = doc.get(key, DEFAULTS.get(key))
        if v is None:
            raise ValueError(f"{where}: field {key!r}: missing")
        if not isinstance(v, list) or not v:
            raise ValueError(f"{where}: field {key!r}: expected a non-empty list")
        refuse_repeats(v, f"{where}: field {key!r}")  # it would run the same points twice
        g[key] = v
    for s in g["seeds"]:
        check_seed(s, f"{where}: field 'seeds'")
    for r in g["rates"]:
        if r != "closed" and not positive_finite(r):
            raise ValueError(
                f"{where}: field 'rates': 'closed' or a positive finite rate, got {shown(r)}"
            )
    for key in ("workflows", "architectures", "schedulers", "levels"):
        for x in g[key]:
            if not isinstance(x, str):
                raise ValueError(f"{where}: field {key!r}: expected names, got {x!r}")
    n = doc.get("instances")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"{where}: field 'instances': expected a positive integer, got {shown(n)}")
    if n is not None and n > MAX_INSTANCES:
        raise ValueError(
            f"{where}: field 'instances': {n} is more than {MAX_INSTANCES} (MAX_INSTANCES)"
        )
    g["instances"] = n
    g["where"] = where
    return g


def load_grid(path: str) -> dict:
    """Read and parse a grid file; its messages name the file."""
    return parse_grid(read_document(Path(path), "sweep grid"), f"sweep grid {path!r}")


def check_names(g: dict) -> None:
    """Resolve every name the grid refers to before any point runs (`runner.check_names`)
    and report all that fail at once, each with its key: an unknown scheduler used to
    fail mid-sweep, after the points before it had run."""
    from octopus.runner import check_names as check

    keys = ("workflows", "architectures", "schedulers", "levels")
    check(g.get("where", "sweep grid"), {k: (f"field {k!r}", g[k]) for k in keys})


def expand(g: dict) -> list[dict]:
    """The runs of a grid, in grid order."""
    return [
        dict(
            workflow=w,
            arch=a,
            scheduler=s,
            level=lv,
            seed=sd,
            rate_per_ms=None if r == "closed" else float(r),
            instances=g["instances"],
        )
        for w, a, s, lv, sd, r in itertools.product(*(g[k] for k in LISTS))
    ]


def run_key(params: dict) -> str:
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@functools.cache
def code_digest() -> str:
    """A hash of octopus's own source (every .py file of the package, by relative path):
    the version alone stays 0.1.0 through every change of the simulator or a built-in
    scheduler, and a row computed by other code is not the row this code would compute.
    Once per process: the code that runs is the code imported at its start."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + _digest(f.read_bytes()).encode())
    return h.hexdigest()


def octopus_version() -> str:
    """The installed distribution's version, or "unknown" (run from a bare source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xyserve-octopus")
    except PackageNotFoundError:
        return "unknown"


def fingerprint(params: dict) -> str:
    """What determines a grid row beyond its parameters, hashed: the bytes of its workflow
    and architecture files (as the loaders read them: a name is the shipped file), its
    plugin scheduler's file (None for a built-in, which the code hash covers), octopus's
    version and the hash of its code. Resume matched rows by parameters alone, so after a
    file or the code changed a rerun into the same folder reused the old rows silently;
    now only a row whose fingerprint matches is reused (`run_grid`)."""
    from octopus.arch.config import arch_file
    from octopus.owg.schema import workflow_file
    from octopus.sched.plugins import source_file

    plugin = source_file(params["scheduler"])
    parts = {
        "workflow": _digest(workflow_file(params["workflow"]).read_bytes()),
        "arch": _digest(arch_file(params["arch"]).read_bytes()),
        "scheduler": _digest(plugin.read_bytes()) if plugin else None,
        "octopus": octopus_version(),
        "code": code_digest(),
    }
    return _digest(json.dumps(parts, sort_keys=True).encode())[:16]


def run_params(params: dict) -> dict:
    """Run one point of the grid; returns the tidy row (parameters, fingerprint, metrics).
    The fingerprint is taken here, just before the files are loaded, so a file edited
    while the sweep runs marks the rows computed from its old contents as stale."""
    from octopus.runner import prepare, run_one

    fp = fingerprint(params)
    cw, arch = prepare(params["workflow"], params["arch"], params["level"])
    if params["rate_per_ms"] is None:
        from octopus.report.metrics import summarize

        s = summarize(run_one(cw, arch, params["scheduler"], params["seed"], params["instances"]))
        metrics = {k: v for k, v in s.items() if not isinstance(v, dict)}
        metrics.update({f"idle_{k}": v for k, v in s["idle_breakdown"].items()})
        for k in ("scheduler", "workflow", "level", "arch"):
            metrics.pop(k)
        metrics["scheduler_name"] = s["scheduler"]
    else:
        from dataclasses import asdict

        from octopus.openloop import run_at_rate

        kw = {"instances": params["instances"]} if params["instances"] else {}
        p = run_at_rate(
            cw, arch, params["scheduler"], params["rate_per_ms"], seed=params["seed"], **kw
        )
        metrics = {k: v for k, v in asdict(p).items() if k != "rate_per_ms"}
    return {"run": run_key(params), **params, "fingerprint": fp, **metrics}


def _done_rows(path: str) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        r = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by the interruption
                        continue
                    rows[r["run"]] = r
    return rows


def resume_plan(runs: list[dict], done: dict[str, dict]) -> tuple[list[dict], int, int]:
    """Which runs to run, given the journal's rows `done` by run key: those not there, and
    those whose row is stale (its fingerprint differs from the one the files and code give
    now, or it has none: journals written before fingerprints were recorded). Returns
    (todo, stale, of which without a fingerprint). Fingerprints are computed once per
    (workflow, architecture, scheduler)."""
    want: dict[tuple, str] = {}
    todo, stale, unmarked = [], 0, 0
    for p in runs:
        row = done.get(run_key(p))
        if row is not None:
            key = (p["workflow"], p["arch"], p["scheduler"])
            if key not in want:
                want[key] = fingerprint(p)
            if row.get("fingerprint") == want[key]:
                continue
            stale += 1
            unmarked += "fingerprint" not in row
        todo.append(p)
    return todo, stale, unmarked


def resume_message(journal: str, reused: int, stale: int, unmarked: int) -> str:
    """What a resume found in the journal, for the user: silence hid stale rows."""
    msg = f"sweep: {journal}: {reused} finished run(s) reused, {stale} stale"
    if stale:
        msg += (
            " (rerun: their workflow, architecture or plugin scheduler file, or octopus's "
            "code, changed since they ran"
        )
        if unmarked:
            msg += f"; {unmarked} written before rows had fingerprints, so unverifiable"
        msg += ")"
    return msg


def process_pool(fn: Callable, todo: list, workers: int) -> Iterable:
    """fn over todo on a local process pool (in this process when workers <= 1), results in
    completion order. When a point fails (or the caller stops reading), the pending points
    are cancelled and the running ones ended at once (`stop_pool`), and the error raised:
    the pool's context manager waited for every pending point first, so a failure early in
    a long sweep was reported only at its end."""
    if workers <= 1:
        for p in todo:
            yield fn(p)
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ex = ProcessPoolExecutor(max_workers=workers)
    try:
        for fut in as_completed([ex.submit(fn, p) for p in todo]):
            yield fut.result()
    except BaseException:  # a point's error, Ctrl-C, or the generator closed by its reader
        stop_pool(ex)
        raise
    ex.shutdown(wait=True)


def stop_pool(ex) -> None:
    """Cancel `ex`'s pending work and terminate its worker processes, then wait for them to
    exit, so that none is left behind. `shutdown(cancel_futures=True)` alone only cancels
    points not yet started and (with wait) waits for the running ones, minutes in a sweep.
    Python 3.14 has `terminate_workers()` for this; before it, the process table is the
    executor's private `_processes`, read before `shutdown`, which clears it."""
    procs = list((getattr(ex, "_processes", None) or {}).values())
    manager = getattr(ex, "_executor_manager_thread", None)
    ex.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join()
    if manager is not None:  # it notices the ended workers and exits
        manager.join(timeout=10)


def on_ray(fn: Callable, todo: list, address: str | None, workers: int | None = None) -> Iterable:
    """fn over todo as Ray tasks (a local Ray started here, or the cluster at `address`),
    results in completion order. At most `workers` tasks are in flight (None: all are
    submitted at once and Ray schedules them over its CPUs): `--workers` was silently
    ignored with Ray, so a sweep meant to leave a shared cluster room took all of it."""
    try:
        import ray
    except ImportError as e:
        raise ValueError("sweep: --executor ray needs Ray: pip install -e .[ray]") from e
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(fn)
        queue = iter(todo)
        pending = [remote.remote(p) for p in itertools.islice(queue, workers or len(todo))]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                result = ray.get(done[0])
                pending += [remote.remote(p) for p in itertools.islice(queue, 1)]  # refill
                yield result
        except BaseException:  # as on a process pool: a cluster's tasks would run on
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    finally:
        if started:
            ray.shutdown()


def executor_stream(
    fn: Callable, todo: list, executor: str, workers: int | None, address: str | None
) -> Iterable:
    if executor not in ("process", "ray"):
        raise ValueError(f"sweep: unknown executor {executor!r} (process | ray)")
    if address and executor != "ray":
        raise ValueError("sweep: --address is for --executor ray")
    if workers is not None and workers < 1:  # 0 and -4 ran in this process, one at a time
        raise ValueError(f"sweep: --workers must be >= 1, got {workers}")
    if executor == "ray":
        return on_ray(fn, todo, address, workers)
    return process_pool(fn, todo, workers if workers is not None else (os.cpu_count() or 1))


def run_grid(
    g: dict,
    out_dir: str,
    executor: str = "process",
    workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
    on_row: Callable[[dict], None] | None = None,
) -> dict:
    """Run every point of grid `g` not already in `out_dir` with a matching fingerprint;
    write the tidy rows. The grid's names are all resolved first (`check_names`): a bad one
    fails before any point runs. Returns the counts: rows, ran, reused (found with a
    matching fingerprint) and stale (found, but computed from other files or code, or
    before rows had fingerprints: rerun)."""
    check_names(g)  # every name, before any point runs
    journal = os.path.join(out_dir, "rows.jsonl")
    runs = expand(g)
    done = _done_rows(journal)
    todo, stale, unmarked = resume_plan(runs, done)
    reused = len(runs) - len(todo)
    if progress and (reused or stale):
        print(resume_message(journal, reused, stale, unmarked), file=sys.stderr)
    stream = executor_stream(run_params, todo, executor, workers, address)  # checks first
    os.makedirs(out_dir, exist_ok=True)
    ran = 0
    with open(journal, "a") as f:
        try:
            for row in tqdm(stream, total=len(todo), desc="sweep", disable=not progress):
                row = json_safe(row)  # NaN -> None: the journal is JSON, a resume reads it
                f.write(json.dumps(row) + "\n")
                f.flush()
                done[row["run"]] = row
                ran += 1
                if on_row:
                    on_row(row)
        except BaseException:
            close = getattr(stream, "close", None)
            if close:  # a failure here, not in a point: end the points still running
                close()
            if progress:
                print(
                    f"sweep: stopped after {ran} of {len(todo)} run(s); the finished rows are "
                    f"in {journal}: run the same command again to resume",
                    file=sys.stderr,
                )
            raise
    rows = [done[run_key(p)] for p in runs]
    cols = list(dict.fromkeys(k for r in rows for k in r))
    csv_path = os.path.join(out_dir, "rows.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, restval="")
        w.writeheader()
        w.writerows(rows)
    out = {"rows": len(rows), "ran": len(todo), "reused": reused, "stale": stale, "csv": csv_path}
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return out
    table = pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in rows])
    out["parquet"] = os.path.join(out_dir, "rows.parquet")
    pq.write_table(table, out["parquet"])
    return out
