"""The PostgreSQL broker's schema and statements, kept apart from the code that runs them.

One table holds every message, whatever its state, told apart by two columns::

    lease_until IS NULL                          ready
    lease_until IS NOT NULL AND lease_id IS NULL   scheduled (an eta): hidden until then
    lease_id IS NOT NULL                         leased to a worker until lease_until

A scheduled message and a leased one are the same thing to a fetch: hidden until a
time. So coming due and a lease running out are one mechanism (``celeriac_fetch`` first
makes every hidden row of its queues whose time has come ready again), and the ready
index holds only ready rows: a countdown hours ahead costs a fetch nothing.

Clocks: every "now" is the server's (``clock_timestamp()``), so workers on machines whose
clocks disagree still agree on leases; an ``eta`` is the producer's Unix time, as
everywhere in celeriac.

``celeriac_fetch`` is a PL/pgSQL function so that a fetch is one round trip: release
what came due, then for each queue in order one ``UPDATE ... WHERE seq IN (SELECT ...
ORDER BY priority DESC, seq LIMIT n FOR UPDATE SKIP LOCKED) RETURNING``. Concurrent
fetchers skip each other's locked rows instead of waiting on them.

Every change that can make a message fetchable (publish, requeue) sends ``NOTIFY`` on
the schema's channel, in the same statement, so a waiting fetcher wakes at commit.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

# {s} is the quoted schema (see postgresql_connection.qualify).
CREATE = (
    """CREATE TABLE IF NOT EXISTS {s}.celeriac_messages (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id text NOT NULL,
        queue text NOT NULL,
        priority smallint NOT NULL CHECK (priority BETWEEN 0 AND 9),
        body bytea NOT NULL,
        ready_at double precision NOT NULL,
        lease_until double precision,
        lease_id bigint,
        delivery_count integer NOT NULL DEFAULT 0
    )""",
    """CREATE INDEX IF NOT EXISTS celeriac_messages_ready
        ON {s}.celeriac_messages (queue, priority DESC, seq) WHERE lease_until IS NULL""",
    """CREATE INDEX IF NOT EXISTS celeriac_messages_hidden
        ON {s}.celeriac_messages (lease_until) WHERE lease_until IS NOT NULL""",
    "CREATE SEQUENCE IF NOT EXISTS {s}.celeriac_lease_ids",
    """CREATE TABLE IF NOT EXISTS {s}.celeriac_dead_letters (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id text NOT NULL,
        queue text NOT NULL,
        priority smallint NOT NULL,
        body bytea NOT NULL,
        delivery_count integer,
        reason text NOT NULL,
        dead_at double precision NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS celeriac_dead_letters_id ON {s}.celeriac_dead_letters (id)",
    """CREATE OR REPLACE FUNCTION {s}.celeriac_fetch(
            queues text[], wanted integer, lease double precision)
        RETURNS TABLE (seq bigint, lease_id bigint, id text, queue text, body bytea,
                       priority smallint, delivery_count integer)
        LANGUAGE plpgsql AS $$
    DECLARE
        now_ double precision := extract(epoch FROM clock_timestamp());
        batch bigint;
        room integer := wanted;
        name text;
        taken integer;
    BEGIN
        -- Hidden rows whose time came (an eta due, a lease run out) are ready again.
        UPDATE {s}.celeriac_messages m
           SET ready_at = m.lease_until, lease_until = NULL, lease_id = NULL
         WHERE m.seq IN (SELECT h.seq FROM {s}.celeriac_messages h
                          WHERE h.lease_until <= now_ AND h.queue = ANY(queues)
                          ORDER BY h.lease_until LIMIT 1000 FOR UPDATE SKIP LOCKED);
        IF room <= 0 THEN
            RETURN;
        END IF;
        batch := nextval('{s}.celeriac_lease_ids');
        FOREACH name IN ARRAY queues LOOP
            EXIT WHEN room <= 0;
            RETURN QUERY
            UPDATE {s}.celeriac_messages m
               SET lease_until = now_ + lease, lease_id = batch,
                   delivery_count = m.delivery_count + 1
             WHERE m.seq IN (SELECT r.seq FROM {s}.celeriac_messages r
                              WHERE r.queue = name AND r.lease_until IS NULL
                              ORDER BY r.priority DESC, r.seq
                              LIMIT room FOR UPDATE SKIP LOCKED)
            RETURNING m.seq, m.lease_id, m.id, m.queue, m.body, m.priority,
                      m.delivery_count;
            GET DIAGNOSTICS taken = ROW_COUNT;
            room := room - taken;
        END LOOP;
    END $$""",
)

NOW = "extract(epoch FROM clock_timestamp())"

# Arrays in, one statement: ids, queues, priorities, bodies, etas (NaN: none). The
# NOTIFY payload is the queue: a fetcher of other queues wakes, looks, and sleeps again.
PUBLISH = f"""
WITH now_ AS (SELECT {NOW} AS t),
ins AS (
    INSERT INTO {{s}}.celeriac_messages (id, queue, priority, body, ready_at, lease_until)
    SELECT m.id, m.queue, m.priority, m.body,
           CASE WHEN m.eta = 'NaN' OR m.eta <= now_.t THEN now_.t ELSE m.eta END,
           CASE WHEN m.eta = 'NaN' OR m.eta <= now_.t THEN NULL ELSE m.eta END
      FROM unnest(%s::text[], %s::text[], %s::smallint[], %s::bytea[],
                  %s::double precision[]) AS m(id, queue, priority, body, eta), now_
    RETURNING queue)
SELECT pg_notify(%s, q.queue) FROM (SELECT DISTINCT queue FROM ins) q
"""

FETCH = "SELECT * FROM {s}.celeriac_fetch(%s::text[], %s, %s)"

# When the next hidden row of these queues comes out (an eta, a lease's end).
NEXT_HIDDEN = f"""
SELECT min(lease_until) - {NOW} FROM {{s}}.celeriac_messages
 WHERE lease_until IS NOT NULL AND queue = ANY(%s::text[])
"""

RECEIPTS = "unnest(%s::bigint[], %s::bigint[]) AS r(seq, lease_id)"

ACK = f"""
DELETE FROM {{s}}.celeriac_messages m USING {RECEIPTS}
 WHERE m.seq = r.seq AND m.lease_id = r.lease_id
"""

# Back to its place (seq is kept), and the fetch does not count.
REQUEUE = f"""
WITH back AS (
    UPDATE {{s}}.celeriac_messages m
       SET lease_until = NULL, lease_id = NULL, delivery_count = m.delivery_count - 1,
           ready_at = {NOW}
      FROM {RECEIPTS}
     WHERE m.seq = r.seq AND m.lease_id = r.lease_id
    RETURNING m.queue)
SELECT pg_notify(%s, q.queue) FROM (SELECT DISTINCT queue FROM back) q
"""

# A lease that already ran out is lost even if nobody took the message yet: the next
# fetch of its queue may release it at any moment.
EXTEND = f"""
UPDATE {{s}}.celeriac_messages m SET lease_until = {NOW} + %s
  FROM {RECEIPTS}
 WHERE m.seq = r.seq AND m.lease_id = r.lease_id AND m.lease_until > {NOW}
RETURNING m.seq, m.lease_id
"""

DEAD_LETTER = f"""
WITH gone AS (
    DELETE FROM {{s}}.celeriac_messages m
     USING unnest(%s::bigint[], %s::bigint[], %s::text[]) AS r(seq, lease_id, reason)
     WHERE m.seq = r.seq AND m.lease_id = r.lease_id
    RETURNING m.id, m.queue, m.priority, m.body, m.delivery_count, r.reason)
INSERT INTO {{s}}.celeriac_dead_letters
    (id, queue, priority, body, delivery_count, reason, dead_at)
SELECT id, queue, priority, body, delivery_count, reason, {NOW} FROM gone
"""

# One pass over the queues' rows; a hidden row whose time came counts as ready.
STATS = f"""
WITH now_ AS (SELECT {NOW} AS t)
SELECT queue,
       count(*) FILTER (WHERE lease_until IS NULL OR lease_until <= now_.t),
       count(*) FILTER (WHERE lease_id IS NULL AND lease_until > now_.t),
       count(*) FILTER (WHERE lease_id IS NOT NULL AND lease_until > now_.t),
       now_.t - min(CASE WHEN lease_until IS NULL THEN ready_at
                         WHEN lease_until <= now_.t THEN lease_until END)
  FROM {{s}}.celeriac_messages, now_
 WHERE %s::text[] IS NULL OR queue = ANY(%s::text[])
 GROUP BY queue, now_.t
"""

DEAD_COUNTS = """
SELECT queue, count(*) FROM {s}.celeriac_dead_letters
 WHERE %s::text[] IS NULL OR queue = ANY(%s::text[]) GROUP BY queue
"""

# Ready, scheduled, and leases that ran out; what a live worker holds stays.
PURGE = f"""
DELETE FROM {{s}}.celeriac_messages
 WHERE queue = ANY(%s::text[]) AND (lease_id IS NULL OR lease_until <= {NOW})
"""

DEAD_LETTERS = """
SELECT id, queue, body, reason, dead_at, delivery_count FROM {s}.celeriac_dead_letters
 ORDER BY seq DESC LIMIT %s
"""

PURGE_DEAD_LETTERS = "DELETE FROM {s}.celeriac_dead_letters"
REMOVE_DEAD_LETTERS = "DELETE FROM {s}.celeriac_dead_letters WHERE id = ANY(%s::text[])"

SCHEDULED = """
SELECT id, queue, body, lease_until FROM {s}.celeriac_messages
 WHERE lease_id IS NULL AND lease_until IS NOT NULL ORDER BY lease_until, seq LIMIT %s
"""
