"""When a peer's lease has expired at etcd (``ExpiryWatch``), judged against a model of
etcd's lessor: remaining TTL answered in whole seconds truncated towards zero, renewals
refused once expired, the expired lease swept 0-500 ms later. The verdict "expired" must
never come while the lease could still be renewed, however late (but in time) its
renewals come, however the answers are delayed or lost; and it must come soon after a
real expiry, before etcd's sweep on average."""

from __future__ import annotations

import math
import random

from gateway.cluster.etcd_store import REAP_POLL_S, ExpiryWatch


class LeaseModel:
    """One lease at etcd: granted ``ttl`` s at 0.0, renewed at ``renewals`` (each one before
    it expired, else refused), swept ``sweep_s`` after it expired."""

    def __init__(self, ttl: int, renewals: list[float], sweep_s: float) -> None:
        self.ttl = ttl
        self.expiry = float(ttl)
        for r in renewals:
            if r < self.expiry:  # an expired lease cannot be renewed
                self.expiry = r + ttl
        self.renewals = [r for r in renewals if r < self.expiry]
        self.sweep_s = sweep_s

    def remaining(self, t: float) -> float:
        last = max([0.0, *[r for r in self.renewals if r <= t]])
        return last + self.ttl - t

    def answer(self, t: float) -> int:
        if t >= self.expiry + self.sweep_s:
            return -1
        return math.trunc(self.remaining(t))


def run(model: LeaseModel, rng: random.Random, until: float, loss: float = 0.0,
        max_rtt: float = 0.02) -> float | None:
    """Ask every REAP_POLL_S (plus the previous answer's delay) until ``until``; the eval
    time of the question that got the verdict "expired", else None."""
    w = ExpiryWatch()
    t = 0.0
    while t < until:
        t += REAP_POLL_S
        sent = t
        rtt = rng.uniform(0.0, max_rtt)
        at_etcd = sent + rng.uniform(0.0, rtt)
        t += rtt
        if rng.random() < loss:
            continue  # lost or timed out: no answer
        verdict = w.answer(1, sent, t, model.answer(at_etcd), model.ttl)
        if verdict == "expired":
            return at_etcd
        if verdict == "gone":
            return None
    return None


def test_late_renewals_in_time_are_never_judged_expired() -> None:
    rng = random.Random(7)
    for _ in range(400):
        ttl = rng.choice([2, 3, 5])
        renewals, t = [], 0.0
        while t < 20.0:  # every renewal in time: late ones (up to 0.99 of a TTL) included
            t += rng.uniform(0.1, 0.99 * ttl)
            renewals.append(t)
        model = LeaseModel(ttl, renewals, sweep_s=0.5)
        assert model.renewals == renewals
        hit = run(model, rng, until=20.0, loss=rng.choice([0.0, 0.3, 0.7]),
                  max_rtt=rng.choice([0.005, 0.2, 0.5]))
        assert hit is None, f"judged expired at {hit:.3f} s, lease alive until " \
                            f"{model.expiry:.3f} s (renewals {renewals})"


def test_an_expired_lease_is_judged_expired_only_after_its_expiry_and_soon() -> None:
    rng = random.Random(11)
    lags: list[float] = []
    for _ in range(400):
        ttl = rng.choice([2, 3])
        stop = rng.uniform(2.0, 6.0)  # renewed every TTL/3 until the gateway dies
        renewals = [i * ttl / 3.0 for i in range(1, int(stop * 3 / ttl) + 1)]
        model = LeaseModel(ttl, renewals, sweep_s=10.0)  # (no sweep: the watch alone)
        hit = run(model, rng, until=model.expiry + 3.0, loss=rng.choice([0.0, 0.2]))
        assert hit is not None, "an expired lease was never judged expired"
        assert hit >= model.expiry, f"judged expired {model.expiry - hit:.3f} s early"
        lags.append(hit - model.expiry)
    lags.sort()
    # sooner than etcd's own sweep (uniform over 500 ms, so 250 ms on average) in most
    # cases; answers lost on the way make the rest later
    assert lags[len(lags) // 2] < 0.25, lags[len(lags) // 2]


def test_a_gap_in_the_answers_starts_the_count_again() -> None:
    w = ExpiryWatch()
    assert w.answer(1, 0.0, 0.01, 1, 2) == "alive"
    assert w.answer(1, 0.1, 0.11, 0, 2) == "alive"  # < 1 s left: expires by 1.11
    # nothing heard for 0.95 s: a renewal may have come and gone unseen
    assert w.answer(1, 1.06, 1.07, 0, 2) == "alive"
    assert w.answer(1, 1.2, 1.21, 0, 2) == "alive"  # counts from 1.07 now
    assert w.answer(1, 2.06, 2.07, 0, 2) == "alive"
    assert w.answer(1, 2.08, 2.09, 0, 2) == "expired"


def test_one_second_leases_and_vanished_leases() -> None:
    w = ExpiryWatch()
    for i in range(40):  # a 1 s lease shows 0 right after a renewal: never judged
        assert w.answer(1, i * 0.1, i * 0.1 + 0.01, 0, 1) == "alive"
    assert w.answer(2, 0.0, 0.01, -1, 2) == "gone"
    w.keep({2})
    assert set(w.last_sent) == {2}
