"""Gossip: which nodes exist, spread without every node hearing every other.

Full-mesh heartbeats (every node subscribed to every other) cost each node
O(N) messages a second, the cluster O(N²).  Here each node subscribes to the
heartbeats of a few peers only (:func:`Gossip.watched`, ``FANOUT`` of them,
whatever N), judges their liveness itself (a phi-accrual detector each, in
:class:`~fabric.cluster.membership.Membership`), and relays what it learns
about any node as *news* riding on its own heartbeat, as SWIM, Serf and
Cassandra do::

    node X's PUB ──HEARTBEAT(own stats, version, news)──► its watchers' SUB (about FANOUT of them)
    watcher: X's detector ─► alive / dead ─► news (X, version, alive) ─► its own heartbeat
    everyone: news ─► Gossip.learn ─► relayed for RETRANSMIT_MULT × log10(N+1) beats

- Whom a node watches: its two successors on the ring of members sorted by
  control endpoint (so every node has two watchers whatever the membership)
  and ``LONG_LINKS`` members chosen by rendezvous hashing (uniform, and stable
  while membership changes: one changes only when its pick dies or a better
  one joins).  The long links make the graph an expander: news reaches every
  node in O(log N) beats instead of the O(N) of a ring.
- What decides between two reports on a node: its *version*, the node's own
  heartbeat counter (its start time in ms plus its beats, so a restart only
  goes up).  A report of a later version wins; at the same version, dead wins
  (the watcher saw that beat and then nothing).  Hearing a node directly (its
  heartbeat, its PEER_HELLO) is news of it alive at a version above any death
  reported, so a node declared dead that speaks again is reinstated, and a
  node that hears itself reported dead greets its watched peers to say so.
- Dead members are remembered ``TOMBSTONE_S`` so an older report does not
  bring them back, then forgotten.
- A joining node greets a seed, whose answer lists every member it knows
  (``alive``); every ``PUSH_PULL_S`` each node greets one random member and
  merges its list (anti-entropy, as memberlist's push-pull), which repairs any
  news that was lost.

Pure: the time is an argument, no socket; unit tests drive it directly.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

FANOUT_RING = 2  # ring successors watched: every node has this many watchers at least
LONG_LINKS = 2  # members watched by rendezvous hashing, for O(log N) spread
RETRANSMIT_MULT = 4  # news rides on this × ceil(log10(N + 1)) heartbeats (memberlist's default)
MAX_NEWS = 32  # news items in one heartbeat at most; the rest wait for the next beats
TOMBSTONE_S = 60.0  # how long a dead member is remembered (an older report cannot revive it)
PUSH_PULL_S = 30.0  # one full exchange of member lists with a random member, this often


@dataclass(frozen=True, slots=True)
class Member:
    """What a node knows about another."""

    pub: str
    version: int
    alive: bool
    since: float  # when it was last found alive or dead (for tombstones)


News = tuple[str, str, int, bool]  # (control, pub, version, alive): one report about a node


class Gossip:
    """The member table of one node, the news it relays and the peers it watches."""

    def __init__(self, control: str, pub: str) -> None:
        self.control = control
        self.pub = pub
        self.members: dict[str, Member] = {}  # by control endpoint; this node excluded
        self.news: dict[str, int] = {}  # control -> heartbeats it still rides on
        self.refuted = False  # someone reported this node dead: it must say otherwise
        self._links: dict[tuple[int, str], bytes] = {}  # (link, member) -> its rendezvous weight
        self._watched: list[str] | None = None  # kept until a member's state flips (it costs O(N log N))

    def learn(self, news: News, now: float) -> bool:
        """A report about a node; True when it changes whether that node is alive."""
        control, pub, version, alive = news
        if control == self.control:
            if not alive:
                self.refuted = True
            return False
        known = self.members.get(control)
        if known is not None and not (version > known.version or (version == known.version and known.alive > alive)):
            return False
        flipped = known is None or known.alive != alive
        self.members[control] = Member(pub, version, alive, now if flipped else known.since)  # type: ignore[union-attr]
        if flipped:
            self.news[control] = self.retransmits()
            self._watched = None
        return flipped

    def heard(self, control: str, pub: str, version: int, now: float) -> bool:
        """The node spoke to us (its heartbeat, its PEER_HELLO): alive, at a version
        above any death reported of it.  True when that is news."""
        known = self.members.get(control)
        if known is not None and not known.alive:
            version = max(version, known.version + 1)
        return self.learn((control, pub, version, True), now)

    def declare_dead(self, control: str, now: float) -> bool:
        """Our detector (or its NODE_LEAVING) says the node is gone."""
        known = self.members.get(control)
        return known is not None and known.alive and self.learn((control, known.pub, known.version, False), now)

    def retransmits(self) -> int:
        return RETRANSMIT_MULT * max(1, math.ceil(math.log10(len(self.members) + 2)))

    def outgoing(self) -> list[News]:
        """The news for the next heartbeat (the freshest first), each counted as sent once."""
        chosen = sorted(self.news, key=self.news.__getitem__, reverse=True)[:MAX_NEWS]
        for control in chosen:
            self.news[control] -= 1
            if not self.news[control]:
                del self.news[control]
        return [self.report(control) for control in chosen if control in self.members]

    def pending(self) -> list[News]:
        """The news not yet sent its full count of times (for a direct answer: not counted)."""
        return [self.report(control) for control in list(self.news)[-MAX_NEWS:] if control in self.members]

    def report(self, control: str) -> News:
        member = self.members[control]
        return control, member.pub, member.version, member.alive

    def alive(self) -> list[tuple[str, str]]:
        """(control, pub) of every member believed alive."""
        return [(control, m.pub) for control, m in self.members.items() if m.alive]

    def watched(self) -> list[str]:
        """The controls of the members whose heartbeats this node subscribes to."""
        if self._watched is None:
            self._watched = self._pick()
        return list(self._watched)

    def _pick(self) -> list[str]:
        ring = sorted([control for control, m in self.members.items() if m.alive] + [self.control])
        at = ring.index(self.control)
        picked = [ring[(at + step) % len(ring)] for step in range(1, min(FANOUT_RING, len(ring) - 1) + 1)]
        others = [control for control in ring if control != self.control and control not in picked]
        for link in range(LONG_LINKS):
            if not others:
                break
            best = max(others, key=lambda control: self._weight(link, control))
            picked.append(best)
            others.remove(best)
        return picked

    def _weight(self, link: int, control: str) -> bytes:
        key = (link, control)
        weight = self._links.get(key)
        if weight is None:
            text = f"{self.control}\0{link}\0{control}".encode()
            weight = self._links[key] = hashlib.blake2b(text, digest_size=8).digest()
        return weight

    def purge(self, now: float) -> list[Member]:
        """Forget members dead for longer than ``TOMBSTONE_S``; return them."""
        old = [c for c, m in self.members.items() if not m.alive and now - m.since > TOMBSTONE_S]
        for control in old:  # dead, so in no ring: what is watched stays
            self.news.pop(control, None)
            for link in range(LONG_LINKS):
                self._links.pop((link, control), None)
        return [self.members.pop(control) for control in old]
