"""The client's view of the cluster: whom to greet, which nodes are lost, paused or back.

Every decision the client's I/O thread takes about nodes, and none of its I/O.
The loop (:mod:`fabric.client.io_loop`, whose :class:`~fabric.client.node_links.NodeLinks`
holds the control DEALERs) feeds it what arrived and the time, and performs
the :class:`Actions` it returns::

    node HEARTBEAT (answer to HELLO)        ─► heartbeat(stats, now) ─┐
    NODE_LEAVING (control DEALER)           ─► node_left(node_id)     ├─► Actions ─► IOLoop: connect + HELLO,
    the loop's tick (at next_deadline())    ─► tick(now, workers, …)  ┘   GOODBYE + HELLO, re-queue
                                                                           a lost node's batches, pause/resume
                                                                           its workers, fail queued work

- The client learns membership from the nodes it talks to, subscribing to
  none: it asks the node it was given (``seed``) for every member it knows
  (STATUS), greets each (a control DEALER and HELLO), and greets the members
  that later answers report alive (gossip's news): connecting to one node is
  enough.  Every
  ``heartbeat_interval_s`` every node is greeted again: that is the client's
  own heartbeat, and each node's answer (its heartbeat) is the client's proof
  that the node lives, judged by a phi-accrual detector per node.
- A node whose silence its phi-accrual detector finds improbable (on an idle
  cluster ``liveness_s`` after its last heartbeat, later for a node whose
  heartbeats come irregularly) is declared dead and lost; one that leaves is
  lost at once.  Its workers' batches go back to the queue, charged nothing.
- A node declared dead that speaks again is told GOODBYE then HELLO: it may
  have forgotten this client meanwhile, and its workers must re-attach with
  fresh credits.
- A node over its ``max_load`` (its heartbeat says it does not accept work) is
  paused: its workers keep their credits but get nothing until it accepts again.
- Work queued while no worker is attached fails after ``connect_timeout_s``
  with a :class:`~fabric.NoNodesError` naming the nodes tried and, when a
  handshake was refused, why.  That patience is for nodes that come and go.
- First contact fails fast.  When every node the client knows has refused its
  handshake (a definitive answer: the keys differ, or one side has none), or
  when no node has answered at all within ``first_contact_s`` of the start
  (nothing listens at the address), the client is *unreachable*: queued work
  and every new call fail at once, with :class:`~fabric.AuthenticationError`
  or a :class:`~fabric.NoNodesError` naming the addresses, until a node speaks.

No socket and no clock: unit tests drive it with fake heartbeats and times.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace

from ..cluster.membership import Membership
from ..cluster.stats import NodeStats
from ..errors import AuthenticationError, NoNodesError

# How long a client waits for the first answer of any node before its calls fail
# (capped by connect_timeout_s).  An embedded node answers in ~0.5 s, a remote
# one in a round trip; a few seconds leave room for a loaded machine.
FIRST_CONTACT_S = 5.0


@dataclass(frozen=True, slots=True)
class Actions:
    """What the I/O loop must do after one event, in this field order."""

    greet: tuple[str, ...] = ()  # control endpoints to say HELLO to (connecting first if new)
    survey: tuple[str, ...] = ()  # control endpoints to ask STATUS: every member they know
    rejoin: tuple[str, ...] = ()  # controls of nodes back from the dead: GOODBYE, then HELLO
    members_changed: bool = False  # a node joined or was lost: the cache ring follows
    lost: tuple[tuple[bytes, str], ...] = ()  # (node id, reason): re-queue what its workers held
    pause: tuple[bytes, ...] = ()  # nodes whose workers get no new batches
    resume: tuple[bytes, ...] = ()
    starved: NoNodesError | None = None  # fail every queued batch with this
    unreachable: NoNodesError | None = None  # fail every queued batch, and new ones until a node speaks


class ClusterView:
    """Membership, greetings, liveness, load pauses and starvation of one client."""

    def __init__(
        self, heartbeat_interval_s: float, liveness_s: float, connect_timeout_s: float,
        refusals: Callable[[], str] = str, refused: Callable[[], Collection[str]] = tuple,
        first_contact_s: float = FIRST_CONTACT_S, client_id: bytes = b"",
    ) -> None:
        """``refusals`` says why handshakes failed, for a NoNodesError ("" if none);
        ``refused`` names the control endpoints whose last handshake was refused."""
        self.client_id = client_id
        self.heartbeat_interval_s = heartbeat_interval_s
        self.connect_timeout_s = connect_timeout_s
        self.refusals = refusals
        self.refused = refused
        self.first_contact_s = min(first_contact_s, connect_timeout_s)
        self.first_contact_by: float | None = None  # set by the first tick
        self.heard = False  # some node has answered since the start
        self.unreachable: NoNodesError | None = None
        # node -> worker -> (this client's batch it was last listed running, since when it is or is not, listed now)
        self.running: dict[bytes, dict[bytes, tuple[int, float, bool]]] = {}
        self.membership = Membership(heartbeat_interval_s, liveness_s)
        self.controls: dict[str, None] = {}  # every control endpoint greeted, in the order learned
        self.declared_dead: set[bytes] = set()
        self.starved_since: float | None = None  # work queued while no worker was attached
        self.next_hello = -math.inf  # the first tick greets every node

    def seed(self, control: str) -> Actions:
        """A node to connect to before any heartbeat (from ``connect()``): greeted,
        and asked for every member it knows (its answer: ``members_listed``)."""
        new = _learn(self.controls, [control])
        return Actions(greet=new, survey=new)

    def members_listed(self, listed: Iterable[NodeStats]) -> Actions:
        """A node's STATUS answer: greet every member it lists (their liveness is
        judged from their own answers to HELLO, not from this list)."""
        return Actions(greet=_learn(self.controls, [stats.control for stats in listed]))

    def heartbeat(self, stats: NodeStats, now: float) -> Actions:
        """A node's heartbeat: its answer to HELLO."""
        previous = self.membership.nodes.get(stats.node_id)
        is_new = self.membership.observe(stats, now)
        back = stats.node_id in self.declared_dead  # expired, so a member again only from now
        self.heard = True
        self.unreachable = None
        self._note_running(stats, now)
        self.declared_dead.discard(stats.node_id)
        was_accepting = previous.accepting if previous is not None else True
        changed = () if stats.accepting == was_accepting else (stats.node_id,)
        return Actions(
            greet=_learn(self.controls, [stats.control, *(control for control, _, _, alive in stats.news if alive)]),
            rejoin=(stats.control,) if back else (),
            members_changed=is_new,
            pause=() if stats.accepting else changed,
            resume=changed if stats.accepting else (),
        )

    def node_left(self, node_id: bytes) -> Actions:
        """The node said NODE_LEAVING: it stops its workers now."""
        stats = self.membership.remove(node_id)
        return Actions(members_changed=True, lost=((node_id, f"node {stats.name if stats else '?'} left"),))

    def tick(self, now: float, workers: int, has_pending: Callable[[], bool]) -> Actions:
        """Time passed: greet every node when due, declare silent nodes dead, and
        fail queued work that waited too long for a worker.  ``workers`` attached
        to this client; ``has_pending`` is asked only while that is 0 (walking a
        long queue of cancelled work costs)."""
        greet: tuple[str, ...] = ()
        if now >= self.next_hello:
            greet = tuple(self.controls)
            self.membership.excuse_stall(now - self.next_hello)  # nodes answer HELLO: none went unsaid
            self.next_hello = now + self.heartbeat_interval_s
        lost = tuple((stats.node_id, f"node {stats.name} silent for {stats.age_s:.1f} s, declared dead")
                     for stats in self.membership.expire(now))
        self.declared_dead.update(node_id for node_id, _ in lost)
        starved = self._starved(now, workers, has_pending)
        if self.first_contact_by is None:
            self.first_contact_by = now + self.first_contact_s
        return Actions(
            greet=greet, members_changed=bool(lost), lost=lost, starved=starved, unreachable=self.check_contact(now)
        )

    def check_contact(self, now: float) -> NoNodesError | None:
        """The error that makes the client unreachable, when it just became so
        (after handshake events, and at each tick): every known node refused
        the handshake, or none answered within ``first_contact_s``."""
        if self.unreachable is not None or self.membership.nodes:
            return None
        self.unreachable = self._contact_error(now)
        return self.unreachable

    def _contact_error(self, now: float) -> NoNodesError | None:
        refused = self.refused()
        if self.controls and all(control in refused for control in self.controls):
            return AuthenticationError(
                f"every node refused this client's handshake: {self.refusals()}; check the cluster key (key_file)"
            )
        if not self.heard and self.first_contact_by is not None and now >= self.first_contact_by:
            refused_text = self.refusals()
            return NoNodesError(
                f"no node answered at {', '.join(self.controls) or 'no address'} within {self.first_contact_s:g} s "
                "of connecting: start a node there (fabric-node start) or check the address"
                + (f"; {refused_text}" if refused_text else "")
            )
        return None

    def _starved(self, now: float, workers: int, has_pending: Callable[[], bool]) -> NoNodesError | None:
        """Before any node has answered, first contact decides (``check_contact``)."""
        if workers or not self.heard or not has_pending():
            self.starved_since = None
        elif self.starved_since is None:
            self.starved_since = now
        elif now - self.starved_since > self.connect_timeout_s:
            self.starved_since = None
            refused = self.refusals()
            return NoNodesError(
                f"no worker was reachable for {self.connect_timeout_s:g} s (nodes tried: "
                f"{', '.join(self.controls) or 'none'}); "
                + (f"{refused}: check the cluster key (key_file)" if refused else "start a node or check the addresses")
            )
        return None

    def expiring(self, now: float) -> bool:
        """A node would be declared dead at this tick (unless a heartbeat waits unread)."""
        expiry = self.membership.next_expiry()
        return expiry is not None and now - expiry > 0

    def next_deadline(self) -> float:
        """When ``tick`` must run next: the next HELLO, expiry or starvation timeout."""
        deadlines = [self.next_hello]
        expiry = self.membership.next_expiry()
        if expiry is not None:
            deadlines.append(expiry)
        if self.starved_since is not None:
            deadlines.append(self.starved_since + self.connect_timeout_s)
        if not self.heard and self.unreachable is None and self.first_contact_by is not None:
            deadlines.append(self.first_contact_by)
        return min(deadlines)

    def _note_running(self, stats: NodeStats, now: float) -> None:
        """Record which of this client's batches each worker of the node runs; a
        batch no longer listed keeps the time it was first missed, for the grace."""
        before = self.running.get(stats.node_id, {})
        after: dict[bytes, tuple[int, float, bool]] = {}
        for w in stats.per_worker:
            worker_id = w.worker_id.encode()
            if w.batch_id and w.client_id == self.client_id:
                after[worker_id] = (w.batch_id, now, True)
            elif (last := before.get(worker_id)) is not None:
                after[worker_id] = (last[0], now, False) if last[2] else last
        self.running[stats.node_id] = after

    def vouched_at(self, worker_id: bytes, node_id: bytes | None, batch_id: int) -> float:
        """The node's word on the worker's acknowledged batch, as a sign of life:
        now and always (infinite) while its latest heartbeat lists the worker
        running it; the first heartbeat that missed it once it stopped (the
        worker's word to its node can overtake its result); never if unlisted."""
        last = self.running.get(node_id, {}).get(worker_id) if node_id in self.membership.nodes else None
        if last is None or last[0] != batch_id:
            return -math.inf
        return math.inf if last[2] else last[1]

    def control_of(self, node_id: bytes) -> str | None:
        """The control endpoint of a live node."""
        stats = self.membership.nodes.get(node_id)
        return stats.control if stats is not None else None

    def live_nodes(self) -> Iterable[NodeStats]:
        return self.membership.nodes.values()

    def nodes(self, now: float) -> list[NodeStats]:
        """The live nodes' latest heartbeats, with their age.  From any thread: the
        tables are copied in one step each (a dict copy holds the GIL), so a node
        joining meanwhile cannot break the iteration."""
        seen = self.membership.last_seen.copy()
        live = list(self.membership.nodes.values())
        return [replace(stats, age_s=now - seen.get(stats.node_id, now)) for stats in live]

    def reported_workers(self) -> int:
        """Workers the live nodes report (from any thread, as ``nodes``)."""
        return sum(stats.workers for stats in list(self.membership.nodes.values()))


def _learn(known: dict[str, None], endpoints: Iterable[str]) -> tuple[str, ...]:
    """The endpoints not yet ``known``, each once, now added to it."""
    new = tuple(dict.fromkeys(endpoint for endpoint in endpoints if endpoint not in known))
    known.update(dict.fromkeys(new))
    return new
