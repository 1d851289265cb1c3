"""The Redis broker: every room served by several tcpchatd nodes through one Redis.

Keys, under `tcpchat:ROOM:`:
  stream    the cluster's events, each naming its room (XADD with MAXLEN ~ broker_stream);
            every node reads it
            from its last id, so a reconnect or an upgrade replays what it missed. Each
            node numbers what it writes (`seq`, per epoch): a reader that finds numbers
            skipped (the stream trimmed past it while it was cut off, or a batch lost on
            its way) logs how many (`broker_gap`) instead of missing them silently
  nicks     hash: nickname_key -> the claim (JSON: nick, node, epoch, n, addr, tls, since)
  nodes     sorted set: node -> the Redis server's TIME of its last heartbeat
  sweeper   the lock of the one node that sweeps silent nodes
  node:NAME the epoch of the live node that goes by NAME, renewed by its heartbeats and
            gone with them: a second node started with a name in use stays apart (and
            says so) instead of taking the first's claims and events for its own
  stats:ID  hash: node -> its counters, for one `tcpchatctl stats`
  accounts  hash: nickname_key -> an account (name, role, Argon2id hash...): every node's
            book; a node reads it whenever it links, and each change is written here
            and told in the stream (an `account` event)

A stream, not PUB/SUB: PUB/SUB delivers at most once and drops a slow subscriber at its
output-buffer limit; the stream gives every node one order and a way back.

Threads: the reader (XREAD BLOCK; it also reconnects, with backoff), the writer
(pipelines what publish() queued, coalescing confirms), the claimer (nickname claims, one
round trip each: a join never waits on Redis on an event loop) and the heartbeat (which
also sweeps while it holds the lock). publish() and claim() only append to a queue: the
hall calls them under its lock, the loops on their threads.

The other nodes (which acknowledge every public message) are those whose heartbeat is
recent, and every node whose events this node reads: a node that has just come is
counted from its first event, not from this node's next heartbeat. A node that stops
says so last (`bye`), so that nobody waits for its acknowledgements.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from ..chat.broker import UNCLAIMED
from ..chat.hall import EventLog
from ..chat.relay import Relay
from ..chat.room import member_info
from ..wire import protocol
from ..wire.nicknames import nickname_key

IO_TIMEOUT = 1.0         # seconds a Redis command may take before the broker is lost
READ_BLOCK_MS = 200      # one XREAD waits this long (a pause for an upgrade waits no longer)
READ_BATCH = 1000        # entries one XREAD takes
BACKOFF_FIRST = 0.2      # seconds before the first retry; doubled up to BACKOFF_MOST
                         # or node_ttl / 2, the smaller
BACKOFF_MOST = 5.0
HISTORY_SCAN = 1000      # newest stream entries searched for a starting node's history
STATS_POLL = 0.02
STATS_KEEP_S = 30        # a stats reply hash expires after this
LINK_WAIT_S = 4 * IO_TIMEOUT  # the writer waits this long at most for the first link
LAG_WINDOW_S = 10.0      # the lag reported is the largest of about this long: a scrape
                         # every 15 s still sees a moment of falling behind
NICKNAME_LOST = ("your nickname was taken on another node while this one was cut off "
                 "from the others; please reconnect")

# Give a claim up only if it is still the one this member made.
RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

# A heartbeat, scored by the Redis server's clock at the moment it is written (a time read
# in a command before, then a pause of this node, would write a stale score: the others
# would sweep a node that has just come back). Returns {added, the nodes alive}, or
# {-1, its epoch} when another node holds this node's name.
HEARTBEAT = """
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[3] then return {-1, owner} end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local added = redis.call('ZADD', KEYS[1], now, ARGV[1])
return {added, redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[2]), '+inf'),
        t[1], t[2]}
"""

# Our name given up at a stop, if it is still ours.
FORGET_NAME = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# A silent node, atomically: out of the node set (unless it spoke meanwhile), its claims
# gone, and every node told by one event in the stream.
SWEEP = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return -1 end
redis.call('ZREM', KEYS[1], ARGV[1])
local claims = redis.call('HGETALL', KEYS[2])
local gone = 0
for i = 1, #claims, 2 do
  if cjson.decode(claims[i + 1]).node == ARGV[1] then
    redis.call('HDEL', KEYS[2], claims[i])
    gone = gone + 1
  end
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[4])
return gone
"""


class BrokerSetupError(Exception):
    """The broker cannot even be tried (the redis package missing, a bad password file)."""


class NodeNameInUse(Exception):
    """Another live node of the cluster goes by this node's name: handled as a lost broker
    (this node serves its own members, and retries until the name is free)."""


def _redis_module():
    try:
        import redis  # the optional extra tcpchatd[redis] (Debian: python3-redis)
    except ImportError:
        raise BrokerSetupError("broker = redis://... needs the redis package: pip install "
                               "'tcpchatd[redis]' (Debian: apt install python3-redis)") from None
    return redis


def check_setup(password_path: str | None) -> None:
    """What a node on Redis needs before it starts (an upgrade's pre-flight asks too):
    the redis package, and a readable password file if one is named."""
    _redis_module()
    read_password(password_path)


def read_password(path: str | None) -> str | None:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError as exc:
        raise BrokerSetupError(f"cannot read the broker password {path}: "
                               f"{exc.strerror}") from None


class RedisBroker:
    """A node of one cluster on one Redis; see the module's docstring."""

    def __init__(self, url: str, room_name: str, node: str, node_ttl: float,
                 stream_length: int, log: EventLog, password: str | None = None,
                 ca: str | None = None, error_log: Callable[[str], None] = print,
                 resume: dict | None = None) -> None:
        redis = _redis_module()
        self.errors = (redis.RedisError, OSError, NodeNameInUse)
        self.url, self.node, self.node_ttl = url, node, node_ttl
        self.stream_length, self.log, self.error_log = stream_length, log, error_log
        options: dict[str, Any] = {"socket_connect_timeout": IO_TIMEOUT, "password": password,
                                   "decode_responses": True, "retry_on_timeout": False,
                                   # `CLIENT LIST` on the Redis side names the node
                                   "client_name": f"tcpchatd-{node}"}
        if url.startswith("rediss://") and ca:
            options["ssl_ca_certs"] = ca
        try:
            from redis.backoff import NoBackoff
            from redis.retry import Retry
            options["retry"] = Retry(NoBackoff(), 0)  # a lost broker is ours to handle
        except ImportError:
            pass
        self.client = redis.Redis.from_url(url, socket_timeout=IO_TIMEOUT, **options)
        # its own connection: an XREAD blocks it
        self.reader = redis.Redis.from_url(url, socket_timeout=IO_TIMEOUT + READ_BLOCK_MS / 1000,
                                           **options)
        prefix = f"tcpchat:{room_name}:"
        self.stream, self.nicks = prefix + "stream", prefix + "nicks"
        self.nodes, self.sweeper, self.stats_prefix = (prefix + "nodes", prefix + "sweeper",
                                                       prefix + "stats:")
        self.name_key = f"{prefix}node:{node}"
        self.accounts = prefix + "accounts"
        self.relay_name = room_name
        self._release = self.client.register_script(RELEASE)
        self._sweep_node = self.client.register_script(SWEEP)
        self._beat_script = self.client.register_script(HEARTBEAT)
        self._forget_name = self.client.register_script(FORGET_NAME)
        if resume and resume.get("at") != [url, room_name, node]:
            resume = None  # another broker, cluster or name now: this node starts afresh there
        resume = resume or {}
        self._identity = [url, room_name, node]
        self.epoch = resume.get("epoch") or uuid.uuid4().hex[:12]  # this node's lifetime
        self.last_id: str | None = resume.get("last_id")  # None: start from the newest
        self._resumed = bool(resume)
        self._serial = itertools.count(resume.get("serial", 0))
        self._seq = int(resume.get("seq", 0))  # the last number written (writer thread)
        # (node, epoch) -> the last number read from it (reader thread)
        self._seen: dict[tuple[str, str], int] = {
            (node_name, epoch): seq for node_name, epoch, seq in resume.get("seen", ())}
        self.relay: Relay = None  # type: ignore[assignment]  # the hall's, once attached
        self.on_event: Callable[[dict], None] = lambda event: None
        self.linked = False
        self.missed = 0        # events that crossed no node while the broker was lost
        self.lag_s = 0.0       # how old the newest event of a batch was when read ...
        self._lag_at = 0.0     # ... the largest of the last LAG_WINDOW_S, read then
        self.events_read = 0
        self.gap_events = 0    # other nodes' events trimmed from the stream unread
        self.clock_offset = 0.0  # the Redis server's clock less ours (heartbeats measure)
        self._ever_linked = False
        self._told_lost = False
        self._lost_reason = ""
        self._linked_at = 0.0
        self._lost_at = time.monotonic()
        self._registered = bool(resume)  # in the node set once: a beat that adds us again
        #                                  means we were swept
        self._others: frozenset[str] = frozenset(resume.get("others", ()))
        self._state = threading.Lock()     # linked, _others, _told_lost
        self._apply = threading.Lock()     # held while a batch of events is applied
        self._registering = threading.Lock()  # the reader and the heartbeat may both find
        #                                       this node swept: one re-registers at a time
        self._queue: deque[dict] = deque()
        self._wake = threading.Condition()
        self._claims: deque[tuple[str, dict, Callable[[str | None], None]]] = deque()
        self._claim_wake = threading.Condition()
        self._gone: dict[str, float] = {}  # node -> when it said bye (see the docstring)
        self._stopping = threading.Event()  # the reader and the heartbeat end
        self._claims_end = threading.Event()  # the claimer ends once its queue is empty
        self._writer_end = threading.Event()  # ... then the writer, once its is
        # the reader's first try to link is over: until then the writer holds what the
        # members publish (an upgrade's new image serves its clients before it links:
        # their first messages would otherwise count as missed, lost to the other nodes)
        self._tried = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- the Broker interface (chat/broker.py)

    def claim(self, nickname: str, info: dict[str, Any],
              done: Callable[[str | None], None]) -> None:
        if not self.linked or self._claims_end.is_set():
            done(UNCLAIMED)
            return
        with self._claim_wake:
            self._claims.append((nickname, info, done))
            self._claim_wake.notify()

    def _claim_loop(self) -> None:
        while True:
            with self._claim_wake:
                while not self._claims and not self._claims_end.is_set():
                    self._claim_wake.wait()
                if not self._claims:
                    return
                nickname, info, done = self._claims.popleft()
            token = self._claim_now(nickname, info)
            try:
                done(token)
            except Exception as exc:  # the hall's; one failure must not end the claimer
                self.error_log(f"tcpchatd: a nickname claim was not settled: {exc!r}")

    def _claim_now(self, nickname: str, info: dict[str, Any]) -> str | None:
        """The token of a new claim, None if taken, UNCLAIMED without Redis."""
        if not self.linked:
            return UNCLAIMED
        token = self._token(nickname, info)
        try:
            taken = not self.client.hsetnx(self.nicks, nickname_key(nickname), token)
        except self.errors as exc:
            self._lost(exc)
            return UNCLAIMED
        return None if taken else token

    def release(self, nickname: str, token: str) -> None:
        if token:
            self._enqueue({"kind": "_release", "key": _claim_key(token, nickname),
                           "token": token})

    def publish(self, event: dict[str, Any]) -> None:
        if not self.linked and self._tried.is_set():  # before the first try: held
            self.missed += 1
            return
        self._enqueue(event)

    def others(self) -> frozenset[str]:
        return self._others

    def gather(self, mine: dict, timeout: float) -> tuple[dict[str, dict], list[str]]:
        """Every live node's stats (ours is `mine`); ({node: stats}, silent nodes)."""
        replies = {self.node: mine}
        if not self.linked:
            return replies, []
        try:  # asked now, not at the last heartbeat: a node that came since is counted
            now = self._server_time()
            expected = set(self.client.zrangebyscore(self.nodes, now - self.node_ttl,
                                                     "+inf")) - {self.node}
        except self.errors:
            expected = set(self._others)
        if not expected:
            return replies, []
        key = self.stats_prefix + uuid.uuid4().hex
        self.publish({"kind": "stats", "reply": key})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got = self.client.hgetall(key)
            except self.errors:
                break
            replies.update({node: json.loads(body) for node, body in got.items()})
            if expected <= replies.keys():
                break
            time.sleep(STATS_POLL)
        return replies, sorted(expected - replies.keys())

    def reply(self, key: str, stats: dict) -> None:
        """Answer another node's `stats` (the reader thread calls it)."""
        try:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.hset(key, self.node, json.dumps(stats))
                pipe.expire(key, STATS_KEEP_S)
                pipe.execute()
        except self.errors as exc:
            self._lost(exc)

    # --- life

    def attach(self, relay: Relay, on_event: Callable[[dict], None]) -> None:
        """The hall's relay (chat/relay.py), which remote events go to; on_event takes the
        admin kinds (kick, ban, unban, stats)."""
        self.relay, self.on_event = relay, on_event

    def start(self) -> None:
        for name, target in (("read", self._read_loop), ("write", self._write_loop),
                             ("claim", self._claim_loop), ("heartbeat", self._heartbeat_loop)):
            thread = threading.Thread(target=target, name=f"tcpchatd broker {name}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """After the hall's last leave: flush (saying `bye` last), leave the node set, end
        the threads."""
        self._stopping.set()
        self.publish({"kind": "bye"})
        self._drain()
        for thread in self._threads:
            thread.join(IO_TIMEOUT + READ_BLOCK_MS / 1000 + 1)
        if self.linked:
            try:
                self.client.zrem(self.nodes, self.node)
                self._forget_name(keys=[self.name_key], args=[self.epoch])
            except self.errors:
                pass
        self.client.close()
        self.reader.close()

    def pause(self) -> dict:
        """For an upgrade: stop reading (at a batch's end), settle the claims asked for,
        write what is queued, and say where the new image goes on; the claims stay as
        they are."""
        self._stopping.set()
        with self._apply:  # a batch being applied finishes; the next is the new image's
            state = {"at": self._identity, "last_id": self.last_id, "epoch": self.epoch,
                     "serial": next(self._serial), "others": sorted(self._others)}
        self._drain()
        state["seq"] = self._seq  # the writer is done: what it numbered last
        state["seen"] = [[node, epoch, seq] for (node, epoch), seq in self._seen.items()]
        return state

    def _drain(self) -> None:
        """The claimer settles what was asked (its joins publish), then the writer writes
        everything queued; both end."""
        by_name = {thread.name.rsplit(" ", 1)[1]: thread for thread in self._threads}
        for name, end, wake in (("claim", self._claims_end, self._claim_wake),
                                ("write", self._writer_end, self._wake)):
            end.set()
            with wake:
                wake.notify()
            if name in by_name:
                by_name[name].join(IO_TIMEOUT * (1 + len(self._claims)) + 1)

    # --- the stream

    def _enqueue(self, event: dict) -> None:
        with self._wake:
            self._queue.append(event)
            self._wake.notify()

    def _write_loop(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._writer_end.is_set():
                    self._wake.wait()
                batch, self._queue = self._queue, deque()
            if batch:
                self._tried.wait(LINK_WAIT_S)
                self._write(batch)
            if self._writer_end.is_set():
                with self._wake:
                    if not self._queue:
                        return

    def _write(self, batch: deque[dict]) -> None:
        if not self.linked:
            self.missed += sum(1 for event in batch if event["kind"] != "_release")
            return
        pipe = self.client.pipeline(transaction=False)
        confirms: dict[str, dict[str, int]] = {}  # origin -> uuid -> confirms, coalesced

        def flush_confirms() -> None:
            for origin, counts in confirms.items():
                self._xadd(pipe, {"kind": "confirms", "to": origin, "counts": counts})
            confirms.clear()
        for event in batch:
            kind = event["kind"]
            if kind == "confirms":  # merged with their neighbours: one entry per origin
                counts = confirms.setdefault(event["to"], {})
                for frame_uuid, count in event["counts"].items():
                    counts[frame_uuid] = counts.get(frame_uuid, 0) + count
                continue
            flush_confirms()  # before what follows them (a tally above all)
            if kind == "_release":
                self._release(keys=[self.nicks], args=[event["key"], event["token"]],
                              client=pipe)
                continue
            if kind == "account":  # the cluster's book, then the news of it
                if event["account"] is None:
                    pipe.hdel(self.accounts, event["key"])
                else:
                    pipe.hset(self.accounts, event["key"], json.dumps(event["account"]))
            self._xadd(pipe, event)
        flush_confirms()
        try:
            pipe.execute()
        except self.errors as exc:
            self.missed += len(batch)  # never written twice: a lost batch is counted
            self._lost(exc)

    def _xadd(self, target: Any, event: dict) -> None:
        self._seq += 1
        body = {**event, "node": self.node, "epoch": self.epoch, "seq": self._seq}
        target.xadd(self.stream, {"e": json.dumps(body)}, maxlen=self.stream_length,
                    approximate=True)

    def _read_loop(self) -> None:
        try:
            self._read_until_stopped()
        finally:  # stopped before its first try to link: the writer waits for it no more
            self._tried.set()

    def _read_until_stopped(self) -> None:
        backoff = BACKOFF_FIRST
        while not self._stopping.is_set():
            if not self.linked:
                linked = self._link()
                self._tried.set()
                if not linked:
                    self._stopping.wait(backoff)
                    # back before the others' sweeper would count this node lost
                    backoff = min(backoff * 2, BACKOFF_MOST, self.node_ttl / 2)
                    continue
                backoff = BACKOFF_FIRST
            try:
                reply = self.reader.xread({self.stream: self.last_id}, count=READ_BATCH,
                                          block=READ_BLOCK_MS)
            except self.errors as exc:
                self._lost(exc)
                continue
            with self._apply:
                if self._stopping.is_set():
                    return  # an upgrade: the new image reads these from last_id
                for _, entries in reply or ():
                    for entry_id, fields in entries:
                        self.last_id = entry_id
                        self._dispatch(fields.get("e", ""))
                    self._count_read(len(entries))
                if not reply:  # nothing new for a whole block: caught up
                    self._caught_up()

    def _count_read(self, count: int) -> None:
        """The lag: a stream id begins with the Redis server's milliseconds at XADD, so
        the newest id read against the server's clock now (ours plus the offset the
        heartbeats measure: nodes on other machines need not share a clock); the
        largest of about LAG_WINDOW_S is kept."""
        self.events_read += count
        written_ms = int(str(self.last_id).partition("-")[0])
        lag = max(0.0, time.time() + self.clock_offset - written_ms / 1000)
        now = time.monotonic()
        if lag >= self.lag_s or now - self._lag_at > LAG_WINDOW_S:
            self.lag_s, self._lag_at = lag, now

    def _caught_up(self) -> None:
        """A read found the stream's end: no lag now. Kept a window like any lag (an
        alert's scrape sees the largest), then 0, not the last event's lag for ever."""
        if time.monotonic() - self._lag_at > LAG_WINDOW_S:
            self.lag_s, self._lag_at = 0.0, time.monotonic()

    def health(self) -> dict[str, float]:
        return {"broker_lag_s": round(self.lag_s, 6), "broker_events_read": self.events_read,
                "broker_queue": len(self._queue), "broker_missed": self.missed,
                "broker_gap_events": self.gap_events}

    def _dispatch(self, body: str) -> None:
        try:
            event = json.loads(body)
            self._apply_event(event)
        except Exception as exc:  # one bad event must not end the node's reading
            self.error_log(f"tcpchatd: broker event not applied: {exc!r}: {body[:200]}")

    def _apply_event(self, event: dict) -> None:
        kind, node, relay = event.get("kind"), str(event.get("node")), self.relay
        if kind == "node_lost":  # from the sweeper, which may be this node
            lost = event["lost"]
            if lost == self.node:  # we were silent too long (a pause): back in
                self._register()
                return
            left = relay.nodes_lost({lost})
            self.log.event("node_lost", node=lost, members=left)
            for key in [key for key in self._seen if key[0] == lost]:
                del self._seen[key]
            with self._state:
                self._others = self._others - {lost}
            return
        if node == self.node:
            return
        if kind == "bye":  # it stopped: nothing more to wait for from it
            with self._state:
                self._others = self._others - {node}
                self._gone[node] = time.monotonic()
            return
        self._seen_node(node)
        if "seq" in event:
            self._count_gap(node, event.get("epoch", ""), int(event["seq"]))
        if kind in ("ack", "confirms", "tally") and event.get("to") != self.node:
            return
        if kind == "join":
            relay.remote_join(node, event["nick"], event.get("room"), event.get("addr", ""),
                              bool(event.get("tls")), float(event.get("since") or 0),
                              bool(event.get("quiet")), event.get("account"),
                              str(event.get("role", "guest")),
                              str(event.get("via") or ("tls" if event.get("tls") else "tcp")))
        elif kind == "part":
            relay.remote_part(node, event["nick"], event.get("room"), event["reason"],
                              event.get("detail"))
        elif kind == "leave":
            relay.remote_leave(node, event["nick"], event["reason"], event.get("detail"))
        elif kind == "nick":
            relay.remote_nick(node, event["old"], event["new"])
        elif kind == "message":
            relay.remote_message(node, event["uuid"], event["nick"], event["text"],
                                 event["stamp"], event.get("to"), bool(event.get("action")),
                                 event.get("at"), event.get("room"))
        elif kind == "announce":
            relay.remote_announce(event["text"], event.get("room"))
        elif kind == "topic":
            relay.remote_topic(event["room"], event["topic"], event["by"], event["at"])
        elif kind == "hello":  # a node (back) in the cluster: where our members are
            self._tell_rooms()
        elif kind == "ack":
            relay.remote_ack(node, event["uuid"], int(event["recipients"]))
        elif kind == "confirms":
            relay.remote_confirms(node, event["counts"])
        elif kind == "tally":
            relay.remote_tally(node, event["uuid"])
        elif kind == "account_of":  # a member of that node logged in
            relay.remote_account(event["nick"], event.get("account"), event.get("role"))
        else:  # kick, ban, unban, stats: the admin side's
            self.on_event(event)

    def _seen_node(self, node: str) -> None:
        """An event from `node`: it is one of the others from now (see the docstring)."""
        if node in self._others:
            return
        with self._state:
            if self.linked:
                self._others = self._others | {node}
                self._gone.pop(node, None)

    def _count_gap(self, node: str, epoch: str, seq: int) -> None:
        last = self._seen.get((node, epoch))
        self._seen[(node, epoch)] = seq
        if last is not None and seq > last + 1:  # see the module's docstring
            self.gap_events += seq - last - 1
            self.log.event("broker_gap", node=node, missed=seq - last - 1)

    # --- linking, losing, registering

    def _link(self) -> bool:
        """Reach Redis; on success this node is (back) in the cluster."""
        try:
            self.client.ping()
            if self.last_id is None:  # a fresh node: the history, then only what is new
                newest = self.client.xrevrange(self.stream, count=HISTORY_SCAN)
                self.last_id = newest[0][0] if newest else "0-0"
                self._seed_history(newest)
        except self.errors as exc:
            if not self._told_lost:
                self._told_lost, self._lost_reason = True, _reason(exc)
                self.log.event("broker_lost", broker=self.url, error=self._lost_reason)
            return False
        with self._state:
            self.linked, self._linked_at = True, time.monotonic()
        first, self._ever_linked = not self._ever_linked, True
        resumed = first and self._resumed  # an upgrade's new image: the claims are as they were
        try:
            if resumed:
                self._heartbeat()
            else:
                self._register()
                # the cluster's accounts (it may have missed changes while cut off)
                books = self.client.hgetall(self.accounts)
                self.on_event({"kind": "accounts",
                               "rows": [json.loads(v) for v in books.values()]})
        except self.errors as exc:
            self._lost(exc)
            return False
        if resumed:
            self._told_lost = False
            return True
        if self._told_lost:
            self.log.event("broker_back", broker=self.url, missed=self.missed,
                           down_s=round(time.monotonic() - self._lost_at, 3))
            self.missed = 0
        else:
            self.log.event("broker", ok="yes", broker=self.url, node=self.node)
        self._told_lost = False
        return True

    def _seed_history(self, newest: list) -> None:
        entries = []
        for _, fields in newest:
            try:
                event = json.loads(fields.get("e", ""))
            except ValueError:
                continue
            if event.get("kind") == "message" and event.get("to") is None:
                entries.append((event.get("room"), event["nick"], event["stamp"],
                                event["text"], event.get("uuid")))
        self.relay.seed_history(entries[::-1])

    def _lost(self, exc: BaseException) -> None:
        reason = _reason(exc)
        with self._state:
            if not self.linked:
                return
            self.linked, self._others = False, frozenset()
            # a retry that fails the same way (a name still in use) is not news
            again = self._told_lost and reason == self._lost_reason
            if not self._told_lost:
                self._lost_at = time.monotonic()
            self._told_lost, self._lost_reason = True, reason
        if not again:
            self.log.event("broker_lost", broker=self.url, error=reason)
        self.relay.nodes_lost(None)  # we reach the other nodes no more: local rooms

    def _register(self) -> None:
        """(Back) in the cluster: our members' nicknames claimed again (a member whose
        nickname another node's member took meanwhile is kicked), every node told who
        they are, the other nodes' members learned from their claims, a heartbeat."""
        with self._registering:  # else the second would find the first's fresh claims taken
            self._register_now()

    def _register_now(self) -> None:
        self._beat()  # first: a node whose name is in use must not touch the claims
        for member, nickname, token in self.relay.claims():
            key = nickname_key(nickname)
            if token and self.client.hget(self.nicks, key) == token:
                continue
            info = member_info(member)
            token = self._token(nickname, info)
            if self.client.hsetnx(self.nicks, key, token):
                self.relay.set_claim(member, token)
                continue
            held = self.client.hget(self.nicks, key)
            if held and self._ours(held):  # a claim that timed out here and that Redis
                self.relay.set_claim(member, held)  # made all the same (it was frozen)
                continue
            self.log.event("nickname_lost", nick=nickname)
            self.relay.disconnect(member, "kicked", protocol.kick_frame(NICKNAME_LOST),
                                 NICKNAME_LOST)
        self._tell_rooms()
        self.publish({"kind": "hello"})  # the other nodes tell where theirs are
        ours = {token for _, _, token in self.relay.claims()}
        for key, body in self.client.hgetall(self.nicks).items():
            claim = json.loads(body)
            if claim["node"] != self.node:
                self.relay.remote_known(claim["node"], claim["nick"], claim.get("addr", ""),
                                        bool(claim.get("tls")),
                                        float(claim.get("since") or 0),
                                        bool(claim.get("quiet")))
            elif body not in ours:  # left while the broker was lost, or an earlier life's:
                self._release(keys=[self.nicks], args=[key, body])  # the others hear of it
                self.publish({"kind": "leave", "nick": claim["nick"], "reason": "quit",
                              "detail": None})
        self._registered = True  # the beat above added us: expected, not a sweep

    def _tell_rooms(self) -> None:
        """Every node hears again which rooms this node's members are in (a join per
        member and room; a node that knew it takes it as no news)."""
        for member, nickname, _ in self.relay.claims():
            info = member_info(member)
            for room in self.relay.rooms_of(member):
                self.publish({"kind": "join", "nick": nickname, "room": room, **info})

    def _ours(self, token: str) -> bool:
        """A claim made by this node in this life."""
        try:
            claim = json.loads(token)
            return claim["node"] == self.node and claim["epoch"] == self.epoch
        except (ValueError, KeyError, TypeError):
            return False

    def _token(self, nickname: str, info: dict[str, Any]) -> str:
        """A claim's token; it names its key, which a release uses (a later version's
        nickname_key may differ)."""
        return json.dumps({"nick": nickname, "key": nickname_key(nickname), "node": self.node,
                           "epoch": self.epoch, "n": next(self._serial), **info},
                          sort_keys=True)

    # --- liveness

    def _heartbeat_loop(self) -> None:
        while not self._stopping.wait(self.node_ttl / 4):
            if not self.linked:
                continue
            try:
                self._heartbeat()
                self._sweep()
            except self.errors as exc:
                self._lost(exc)

    def _server_time(self) -> float:
        seconds, micros = self.client.time()
        return seconds + micros / 1e6

    def _heartbeat(self) -> None:
        if self._beat() and self._registered:  # swept while silent, or Redis came back empty
            self._register()
        self._registered = True

    def _beat(self) -> bool:
        """One heartbeat; the nodes alive learned, and the offset of the Redis server's
        clock to ours (the time it read, against the middle of the round trip). True if
        it added this node to the set."""
        before = time.time()
        added, alive, *server_time = self._beat_script(
            keys=[self.nodes, self.name_key],
            args=[self.node, self.node_ttl, self.epoch, int(self.node_ttl * 1000)])
        if server_time:
            seconds, micros = server_time
            self.clock_offset = int(seconds) + int(micros) / 1e6 - (before + time.time()) / 2
        if added == -1:
            raise NodeNameInUse(f"the node name {self.node} is in use by another node of "
                                f"cluster {self.relay_name}: give each node its own node_name")
        with self._state:
            if self.linked:
                now = time.monotonic()
                self._gone = {node: at for node, at in self._gone.items()
                              if now - at < self.node_ttl}
                self._others = frozenset(alive) - {self.node} - self._gone.keys()
        return bool(added)

    def _sweep(self) -> None:
        """Holding the sweeper's lock: every node silent for node_ttl is lost. Not in the
        first node_ttl after (re)linking: after Redis comes back empty, the others have
        not spoken yet."""
        if time.monotonic() - self._linked_at < self.node_ttl:
            return
        ttl_ms = int(self.node_ttl * 1000)
        if not self.client.set(self.sweeper, self.node, nx=True, px=ttl_ms):
            if self.client.get(self.sweeper) != self.node:
                return
            self.client.pexpire(self.sweeper, ttl_ms)
        now = self._server_time()
        for silent in self.client.zrangebyscore(self.nodes, "-inf", now - self.node_ttl):
            if silent == self.node:
                continue
            event = json.dumps({"kind": "node_lost", "lost": silent, "node": self.node})
            self._sweep_node(keys=[self.nodes, self.nicks, self.stream],
                             args=[silent, now - self.node_ttl, self.stream_length, event])


def _claim_key(token: str, nickname: str) -> str:
    """The key a claim was made under (tokens before the keys named none)."""
    try:
        return str(json.loads(token)["key"])
    except (ValueError, KeyError, TypeError):
        return nickname_key(nickname)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
