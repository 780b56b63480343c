"""User schedulers: loading by module or file path, the interface check, strict views, CLI."""

import pytest
from octo_helpers import TUTORIAL, TUTORIAL_SPEC, arch, simulate, task, workflow

from octopus.cli import main
from octopus.owg.arrival import make_arrivals
from octopus.report.metrics import lower_bound
from octopus.runner import prepare, run_one
from octopus.sched import make_scheduler, register
from octopus.sched.greedy import GreedyScheduler
from octopus.sched.plugins import load_class, unregister
from octopus.sim import Simulator

CHAIN = workflow([task("a", 10.0, ["b"]), task("b", 5.0)])

LACKING = """
class Half:
    def attach(self, api):
        self.api = api

    def on_ready(self, k, t):
        pass
"""

WRITER = """
from octopus.sched.api import Scheduler


class Writer(Scheduler):
    def on_ready(self, k, t):
        self.api.config[0] = 3  # not allowed: the views are read-only

    def on_free(self, peas, t):
        pass
"""


def test_module_path_loads_the_class_and_runs_like_the_built_in():
    assert load_class("octopus.sched.greedy:GreedyScheduler") is GreedyScheduler
    cw, a = prepare("recommendation", "chip")
    x = run_one(cw, a, "octopus.sched.greedy:GreedyScheduler", 0, instances=12)
    y = run_one(cw, a, "greedy", 0, instances=12)
    assert x.makespan == y.makespan and x.n_events == y.n_events


def test_file_path_loads_the_tutorial_scheduler():
    cls = load_class(TUTORIAL_SPEC)
    assert cls.__name__ == "ShortestWait"
    sim = simulate(CHAIN, arch(peas=(2, 1)), TUTORIAL_SPEC, n=3, strict=True)
    assert sim.finished == 3 and sim.makespan >= lower_bound(sim)["bound_us"]


def test_a_class_that_lacks_the_interface_is_refused_naming_what_it_lacks(tmp_path):
    f = tmp_path / "half.py"
    f.write_text(LACKING)
    with pytest.raises(ValueError, match=r"class Half lacks on_free"):
        load_class(f"{f}:Half")
    with pytest.raises(ValueError, match=r"has no 'Missing'"):
        load_class(f"{f}:Missing")
    with pytest.raises(FileNotFoundError, match="no file"):
        load_class(f"{tmp_path}/absent.py:X")
    with pytest.raises(ValueError, match="cannot import"):
        load_class("no_such_package_xyz.mod:X")
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_scheduler("no-such-name")


def test_strict_views_refuse_writes(tmp_path):
    f = tmp_path / "writer.py"
    f.write_text(WRITER)
    with pytest.raises(TypeError):
        simulate(CHAIN, arch(), f"{f}:Writer", strict=True)


def test_registered_plugins_are_scheduler_names():
    register("test-tutorial-alias", TUTORIAL_SPEC)
    try:
        assert type(make_scheduler("test-tutorial-alias")).__name__ == "ShortestWait"
        with pytest.raises(ValueError, match="already registered"):
            register("test-tutorial-alias", TUTORIAL_SPEC)
    finally:
        unregister("test-tutorial-alias")


def test_cli_runs_a_plugin_and_reports_a_bad_one(tmp_path, capsys):
    rc = main(["run", "-w", "recommendation", "--instances", "6", "-s", TUTORIAL_SPEC])
    assert rc == 0 and "shortest-wait" in capsys.readouterr().out
    f = tmp_path / "half.py"
    f.write_text(LACKING)
    assert main(["run", "-w", "recommendation", "-s", f"{f}:Half"]) == 2
    assert "lacks on_free" in capsys.readouterr().err


def test_tutorial_on_the_suite_meets_both_bounds():
    cw, a = prepare("video_recognition", "chip")
    sim = run_one(cw, a, TUTORIAL_SPEC, 1, instances=20)
    b = lower_bound(sim)
    assert sim.finished == 20
    assert sim.makespan >= b["bound_us"] and sim.makespan >= b["window_bound_us"]


def test_the_tutorial_page_shows_the_file_verbatim():
    page = (TUTORIAL.parent.parent / "octopus-scheduler-tutorial.md").read_text()
    assert TUTORIAL.read_text().strip() in page


def test_cli_refuses_a_threshold_for_other_schedulers(capsys):
    assert main(["run", "-w", "recommendation", "-s", "greedy", "--threshold", "1"]) == 2
    assert "--threshold" in capsys.readouterr().err


PROBE = """
from octopus.sched.greedy import GreedyScheduler


class Probe(GreedyScheduler):
    seen = []

    def on_ready(self, k, t):
        api = self.api
        tb = api.node[k]
        Probe.seen.append(
            (t, api.now, api.n_queued, len(api.free_peas(0)), len(api.warm_peas(0, tb)),
             len(api.blocked_peas(0)))
        )
        super().on_ready(k, t)
"""


def test_cluster_views_count_free_warm_and_blocked_peas(tmp_path):
    # a chain on 2 PEAs with one output slot: each result blocks its producer until read
    f = tmp_path / "probe.py"
    f.write_text(PROBE)
    wf = workflow([task("a", 10.0, ["b"]), task("b", 10.0)])
    sim = simulate(wf, arch(peas=(2, 1), slots=1), f"{f}:Probe", n=2, concurrency=1, strict=True)
    seen = sim.sched.seen
    assert all(t == now and q >= 1 for t, now, q, *_ in seen)
    assert seen[0][3:] == (2, 0, 0)  # start: both PEAs free, none configured, none blocked
    # b becomes ready when a finishes: a's PEA is blocked holding a's result, one is free
    assert seen[1][3] == 1 and seen[1][5] == 1


def test_entry_points_register_scheduler_names(monkeypatch):
    import octopus.sched.plugins as plugins
    from octopus.sched import all_names

    class EP:
        name, value = "ep-tutorial", TUTORIAL_SPEC

    monkeypatch.setattr(
        plugins, "entry_points", lambda group: [EP] if group == "octopus.schedulers" else []
    )
    assert "ep-tutorial" in all_names()
    assert type(make_scheduler("ep-tutorial")).__name__ == "ShortestWait"


# the tutorial plugin's results before the core's hot path was merged for the built-in
# schedulers (pinned at dbf9e63): a plugin sees the same events through the strict interface
PINNED_PLUGIN = {
    ("video_recognition", "chip", 1, 20): (12302.160297634347, 2230),
    ("agent_loop", "chiplet", 0, 16): (203373.3907261679, 497),
}


@pytest.mark.parametrize("key", sorted(PINNED_PLUGIN))
@pytest.mark.parametrize("strict", [False, True])
def test_a_plugin_scheduler_gives_the_pinned_results(key, strict):
    wf, arch_name, seed, n = key
    cw, a = prepare(wf, arch_name)
    arr = make_arrivals(cw.wf.arrival, a.n_clusters, seed, n)
    sim = Simulator(cw, a, make_scheduler(TUTORIAL_SPEC), arr, seed=seed, strict=strict).run()
    assert (sim.makespan, sim.n_events) == PINNED_PLUGIN[key]


MISUSER = '''
from octopus.sched.api import Scheduler


class Misuser(Scheduler):
    """Starts every ready invocation on PEA 0, running or not."""

    name = "misuser"

    def on_ready(self, k, t):
        self.api.start(k, [0], t)

    def on_free(self, peas, t):
        pass
'''


def test_strict_mode_refuses_a_start_on_a_busy_pea(tmp_path):
    """The engine trusted a scheduler's start: one on a running PEA double-booked it and
    corrupted the time split silently. In strict mode the call fails, named."""
    f = tmp_path / "misuser.py"
    f.write_text(MISUSER)
    fan = workflow(
        [
            task("a", 1.0, ["f"]),
            {"id": "f", "type": "fanout", "count": 3, "body": "w", "join": "j"},
            task("w", 10.0, ["j"]),
            {"id": "j", "type": "join"},
        ]
    )
    with pytest.raises(RuntimeError, match=r"'misuser': start\(.*PEA 0 is not free"):
        simulate(fan, arch(), f"{f}:Misuser", strict=True)


@pytest.mark.parametrize("name", ["greedy", "octopus"])
def test_registering_a_built_in_name_is_refused(name):
    """`register("greedy", spec)` was accepted, but `make_scheduler("greedy")` looks the
    built-ins up first, so every run under that name ran the built-in, not the plugin."""
    with pytest.raises(ValueError, match="is a built-in"):
        register(name, TUTORIAL_SPEC)
    assert type(make_scheduler(name)).__module__.startswith("octopus.sched.")
