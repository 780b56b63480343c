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
interrupted sweep resumes by skipping the runs already there. At the end the rows are
written in grid order as `rows.csv` (and `rows.parquet` when pyarrow is installed): every
parameter and every metric, one row per run.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterable

import yaml
from tqdm import tqdm

from octopus.checks import check_seed, positive_finite, refuse_repeats, shown
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
    with open(path) as f:
        return parse_grid(yaml.safe_load(f), f"sweep grid {path!r}")


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


def run_params(params: dict) -> dict:
    """Run one point of the grid; returns the tidy row (parameters + metrics)."""
    from octopus.runner import prepare, run_one

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
    return {"run": run_key(params), **params, **metrics}


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


def process_pool(fn: Callable, todo: list, workers: int) -> Iterable:
    """fn over todo on a local process pool (in this process when workers <= 1), results in
    completion order."""
    if workers <= 1:
        for p in todo:
            yield fn(p)
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=workers) as ex:
        for fut in as_completed([ex.submit(fn, p) for p in todo]):
            yield fut.result()


def on_ray(fn: Callable, todo: list, address: str | None) -> Iterable:
    """fn over todo as Ray tasks (a local Ray started here, or the cluster at `address`),
    results in completion order."""
    try:
        import ray
    except ImportError as e:
        raise ValueError("sweep: --executor ray needs Ray: pip install -e .[ray]") from e
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(fn)
        pending = [remote.remote(p) for p in todo]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
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
        return on_ray(fn, todo, address)
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
    """Run every point of grid `g` not already in `out_dir`; write the tidy rows. The grid's
    names are all resolved first (`check_names`): a bad one fails before any point runs."""
    check_names(g)  # every name, before any point runs
    journal = os.path.join(out_dir, "rows.jsonl")
    runs = expand(g)
    done = _done_rows(journal)
    todo = [p for p in runs if run_key(p) not in done]
    stream = executor_stream(run_params, todo, executor, workers, address)  # checks first
    os.makedirs(out_dir, exist_ok=True)
    with open(journal, "a") as f:
        for row in tqdm(stream, total=len(todo), desc="sweep", disable=not progress):
            row = json_safe(row)  # NaN -> None: the journal is JSON, and a resume reads it
            f.write(json.dumps(row) + "\n")
            f.flush()
            done[row["run"]] = row
            if on_row:
                on_row(row)
    rows = [done[run_key(p)] for p in runs]
    cols = list(dict.fromkeys(k for r in rows for k in r))
    csv_path = os.path.join(out_dir, "rows.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, restval="")
        w.writeheader()
        w.writerows(rows)
    out = {"rows": len(rows), "ran": len(todo), "skipped": len(runs) - len(todo), "csv": csv_path}
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return out
    table = pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in rows])
    out["parquet"] = os.path.join(out_dir, "rows.parquet")
    pq.write_table(table, out["parquet"])
    return out
