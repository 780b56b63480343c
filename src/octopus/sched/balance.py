"""Inter-cluster balancing of queued work: diffusion between neighbours, or a central one.

Load w_c is the queued work per PEA of cluster c (EWMA duration x footprint). Diffusion moves
alpha * (w_i - w_j) * PEAs worth of work from i to each lighter neighbour j, each period,
with no global state. The centralised balancer pairs the heaviest with the lightest clusters
anywhere, but acts on a snapshot that is a network round trip plus its decision time old.
"""

from __future__ import annotations

INF = float("inf")


def cluster_loads(s) -> list[float]:
    ewma, fp, npc = s.api.ewma, s.fp, s.api.arch.peas_in_cluster
    return [sum([len(q) * ewma[tb] * fp[tb] for tb, q in enumerate(qs) if q]) / npc for qs in s.q]


def move_work(s, src: int, dst: int, amount: float, t: float, gain: float = INF) -> None:
    """Move up to `amount` PEA-us of queued invocations from cluster src to dst.

    Cost aware (`s.cost_aware`): an invocation moves only when bringing its input to dst
    takes less than the queueing delay it saves, `gain` (the difference in queued work per
    PEA). The inputs moved by one step share the route, so each is costed as if it queued
    behind the ones moved before it (link contention). Moving work whose data transfer
    outlasts the wait it saves is the reactive rebalancing Part 2 criticises. Moving a
    queued invocation moves no data until it starts, so moving it again costs nothing."""
    api = s.api
    ewma, fp, qs = api.ewma, s.fp, s.q[src]
    p_dst = api.arch.cluster_peas[dst][0]
    # queued work of each TB not tried, in ascending TBs; moving one invocation changes
    # only its TB's entry (nothing else in src's queues or the EWMAs changes meanwhile)
    work = {x: len(q) * ewma[x] * fp[x] for x, q in enumerate(qs) if q}
    sent = 0.0  # bytes already sent toward dst by this step
    while amount > 0 and work:
        # the TB with the most queued work (ties: the lowest TB, the first in the dict)
        tb = max(work, key=work.__getitem__)
        q = qs[tb]
        k = q[-1]
        cost = api.input_us(k, p_dst, sent)
        if s.cost_aware and cost >= gain:
            del work[tb]  # tried
            continue
        q.pop()
        if q:
            work[tb] = len(q) * ewma[tb] * fp[tb]
        else:
            del work[tb]
        sent += api.input_bytes(k)
        amount -= ewma[tb] * fp[tb]
        s.enqueue(dst, k, t)
        s.migrated += 1


def diffusion_step(s, t: float, alpha: float) -> None:
    w = cluster_loads(s)
    if not any(w):
        return
    npc = s.api.arch.peas_in_cluster
    flows = []
    for i, nb in enumerate(s.api.arch.neighbors):
        for j in nb:
            if w[i] > w[j]:
                flows.append((i, j, alpha * (w[i] - w[j]) * npc, w[i] - w[j]))
    for i, j, f, g in flows:
        move_work(s, i, j, f, t, g)


def central_step(s, t: float) -> None:
    snap = cluster_loads(s)
    if not any(snap):
        return
    arch = s.api.arch
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
            move_work(s, hi, lo, d * npc, now, 2 * d)
            i, j = i - 1, j + 1

    s.api.call_at(t + delay, act)
