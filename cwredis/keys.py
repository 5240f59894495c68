"""The only module that spells a Redis key.

Every key lives under one namespace (default ``cw``), spelled as a hash tag:
``{cw}:job:<id>``. Valkey/Redis Cluster places a key by the hash of the part
between the first ``{`` and ``}``, so the whole namespace lives in one slot of
one shard: every Lua script and MULTI may touch any of its keys, and a script
may build keys it discovers (below). The tag is there on a single server too,
so there is one key layout (:mod:`cwredis.cluster` finds the shard).

Lua scripts receive their keys in ``KEYS``; where a script discovers job ids
itself (popping a queue, sweeping a dead worker's in-flight list) it cannot
know their keys in advance, so it receives the key *prefixes* below in
``ARGV`` from :meth:`Keys.prefixes` and appends the id -- the spelling still
lives here. (Legal in a cluster only because of the hash tag: an undeclared
key in another slot would be refused.)

Below, ``cw`` stands for ``{cw}``.

=====================  ======  ===============================================
key                    type    holds
=====================  ======  ===============================================
``cw:queue:<name>``    LIST    pending job ids; LPUSH on submit, taken from
                               the right (oldest first); a retried job is
                               RPUSHed so it runs next
``cw:job:<id>``        HASH    the job record (:mod:`cwredis.job`)
``cw:job:<id>:args``   STRING  the job's signed arguments when they are large
                               (written beside submit.lua; the record's ``a``
                               field then holds ``job.STAGED_ARGS``); deleted
                               when the job ends, else expires with its function
``cw:spec:<digest>``   HASH    what jobs of one submitter and function share:
                               client, queue, environment, timeout,
                               max_attempts, the function's digest
``cw:blob:<digest>``   HASH    a pickled function or environment, stored once:
                               ``b`` the signed blob, ``n`` its display name
``cw:inflight:<w>``    LIST    ids worker ``w`` has claimed (or is claiming)
``cw:idle:<name>``     ZSET    worker id -> when it parked: workers that found
                               queue ``name`` empty and wait for a hand-off
``cw:parked:<w>``      STRING  how many jobs submit may hand worker ``w``
                               straight away (its idle children); absent: none
``cw:inbox:<w>``       LIST    what ``w``'s blocked fetcher receives: jobs
                               handed to it (already claimed) or "wake"
``cw:pchildren:<w>``   LIST    inbox names of ``w``'s job processes blocked on
                               their own inboxes; submit.lua pops one per job
``cw:cinbox:<w>:<i>``  LIST    what ``w``'s parked job process ``i`` receives:
                               one job handed to it, or "u" (stop waiting)
``cw:workers``         ZSET    worker id -> lease deadline (ms since epoch)
``cw:worker:<w>``      HASH    host, pid, queues, concurrency (for ``status``)
``cw:delayed``         ZSET    job id -> time (ms) it may start
``cw:failed``          ZSET    job id -> time (ms) it failed
``cw:results:<c>``     LIST    outcomes waiting for client ``c``
``cw:rseq:<c>``        STRING  sequence number of client ``c``'s last outcome
``cw:stage:<j>:<t>``   STRING  a large outcome body of job ``j``'s attempt ``t``, written
                               beside complete.lua and named by its results entry
``cw:chan:<c>``        pubsub  wakes client ``c`` when an outcome is pushed
                               (a sharded channel: SPUBLISH/SSUBSCRIBE)
``cw:config``          HASH    settings the coordinator publishes (lease_ms)
``cw:stats``           HASH    counters: done, failed; done:<queue>, failed:<queue>
                               (for ``status``, the dashboard, /metrics)
=====================  ======  ===============================================
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key names for one namespace; see the module docstring for the layout."""

    namespace: str = "cw"

    @property
    def hash_tag(self) -> str:
        """``{namespace}``: the part of every key (and channel) Cluster hashes to pick its slot."""
        return "{" + self.namespace + "}"

    def _key(self, *parts: str) -> str:
        return ":".join((self.hash_tag, *parts))

    def queue(self, name: str) -> str:
        return self._key("queue", name)

    def job(self, job_id: str) -> str:
        return self._key("job", job_id)

    def staged_args(self, job_id: str) -> str:
        """A job's large arguments, outside its record (the Lua scripts spell it ``job_key .. ':args'``)."""
        return self.job(job_id) + ":args"

    def spec(self, digest: str) -> str:
        return self._key("spec", digest)

    def blob(self, digest: str) -> str:
        return self._key("blob", digest)

    def inflight(self, worker_id: str) -> str:
        return self._key("inflight", worker_id)

    def idle(self, queue: str) -> str:
        return self._key("idle", queue)

    def parked(self, worker_id: str) -> str:
        return self._key("parked", worker_id)

    def inbox(self, worker_id: str) -> str:
        return self._key("inbox", worker_id)

    def parked_children(self, worker_id: str) -> str:
        """The inboxes of worker ``worker_id``'s job processes parked on them (:mod:`cwredis.worker.parking`)."""
        return self._key("pchildren", worker_id)

    def child_inbox(self, worker_id: str, index: int) -> str:
        """Job process ``index`` of worker ``worker_id``'s own inbox, while it is parked."""
        return self.child_inbox_prefix(worker_id) + str(index)

    def child_inbox_prefix(self, worker_id: str) -> str:
        """:meth:`child_inbox` without the index (requeue_expired.lua looks at every slot's)."""
        return self._key("cinbox", worker_id, "")

    def worker(self, worker_id: str) -> str:
        return self._key("worker", worker_id)

    def results(self, client_id: str) -> str:
        return self._key("results", client_id)

    def channel(self, client_id: str) -> str:
        return self._key("chan", client_id)

    def result_seq(self, client_id: str) -> str:
        return self._key("rseq", client_id)

    def staged_body(self, job_id: str, token: str) -> str:
        return self._key("stage", job_id, token)

    @property
    def workers(self) -> str:
        return self._key("workers")

    @property
    def delayed(self) -> str:
        return self._key("delayed")

    @property
    def failed(self) -> str:
        return self._key("failed")

    @property
    def config(self) -> str:
        return self._key("config")

    @property
    def stats(self) -> str:
        return self._key("stats")

    @property
    def queue_pattern(self) -> str:
        """SCAN pattern matching every queue list."""
        return self._key("queue", "*")

    def queue_name(self, key: str) -> str:
        """Inverse of :meth:`queue`."""
        return key[len(self._key("queue", "")):]

    def prefixes(self) -> list[str]:
        """Key prefixes for scripts that discover ids: job, spec, queue, results, channel, inflight, result_seq."""
        return [
            self._key("job", ""),
            self._key("spec", ""),
            self._key("queue", ""),
            self._key("results", ""),
            self._key("chan", ""),
            self._key("inflight", ""),
            self._key("rseq", ""),
        ]

    def session_jobs(self, session: str) -> str:
        """LIST of the ids of a session's jobs, in the order they were created."""
        return self._key("sjobs", session)

    @property
    def sessions(self) -> str:
        """ZSET session name -> last activity (ms)."""
        return self._key("sessions")

    def outcome_prefixes(self) -> list[str]:
        """Prefixes of a client's outcome list, its sequence counter and its channel (prelude's outcome_prefixes)."""
        return [self._key("results", ""), self._key("rseq", ""), self._key("chan", "")]

    def handoff(self) -> list[str]:
        """What a script that queues jobs needs to hand them to parked workers (see ``_prelude.lua``).

        The workers key, then the prefixes of idle, parked, inbox and inflight keys.
        """
        return [self.workers, self._key("idle", ""), self._key("parked", ""), self._key("inbox", ""),
                self._key("inflight", "")]

    def children_prefix(self) -> str:
        """Prefix of :meth:`parked_children`, for submit.lua (which hands a job to a parked job process)."""
        return self._key("pchildren", "")


DEFAULT_KEYS = Keys()
