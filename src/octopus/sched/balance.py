"""Inter-cluster balancing of queued work: diffusion between neighbours, or a central one.

Load w_c is the queued work per PEA of cluster c (EWMA duration x footprint). Diffusion moves
alpha * (w_i - w_j) * PEAs worth of work from i to each lighter neighbour j, each period,
with no global state. The centralised balancer pairs the heaviest with the lightest clusters
anywhere, but acts on a snapshot that is a network round trip plus its decision time old.
"""

from __future__ import annotations


def cluster_loads(s) -> list[float]:
    ewma, fp, npc = s.sim.ewma, s.fp, s.sim.arch.peas_in_cluster
    return [sum(len(q) * ewma[tb] * fp[tb] for tb, q in enumerate(qs) if q) / npc for qs in s.q]


def move_work(s, src: int, dst: int, amount: float, t: float) -> None:
    """Move up to `amount` PEA-us of queued invocations from cluster src to dst."""
    ewma, fp, qs = s.sim.ewma, s.fp, s.q[src]
    while amount > 0:
        tb = max(range(len(qs)), key=lambda x: len(qs[x]) * ewma[x] * fp[x])
        if len(qs[tb]) <= 0:
            return
        k = qs[tb].pop()
        amount -= ewma[tb] * fp[tb]
        s.enqueue(dst, k, t)
        s.migrated += 1


def diffusion_step(s, t: float, alpha: float) -> None:
    w = cluster_loads(s)
    if not any(w):
        return
    npc = s.sim.arch.peas_in_cluster
    flows = []
    for i, nb in enumerate(s.sim.arch.neighbors):
        for j in nb:
            if w[i] > w[j]:
                flows.append((i, j, alpha * (w[i] - w[j]) * npc))
    for i, j, f in flows:
        move_work(s, i, j, f, t)


def central_step(s, t: float) -> None:
    snap = cluster_loads(s)
    if not any(snap):
        return
    arch = s.sim.arch
    delay = 2.0 * arch.diameter_us() + arch.central_decision_us

    def act(now: float) -> None:
        order = sorted(range(len(snap)), key=snap.__getitem__)
        npc = arch.peas_in_cluster
        i, j = len(order) - 1, 0
        while i > j:
            hi, lo = order[i], order[j]
            d = (snap[hi] - snap[lo]) / 2
            if d <= 0:
                break
            move_work(s, hi, lo, d * npc, now)
            i, j = i - 1, j + 1

    s.sim.call_at(t + delay, act)
