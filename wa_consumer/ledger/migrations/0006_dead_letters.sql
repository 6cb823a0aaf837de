-- The dead-letter queue's mirror (issue 16): one row per death whose copy went to the DLQ,
-- written by the daemon with the reason, the copy's headers and the body, so that `dlq stats`,
-- `list`, `show` and the console read PostgreSQL and the queue is touched only to replay or
-- purge. A message replayed and dead again gets a new row; the old one leaves state 'dead'.
CREATE TABLE wa_dead (
    id              bigserial PRIMARY KEY,
    tenant_id       text,                  -- NULL: no tenant could be read (an unreadable body)
    internal_id     text,                  -- the body's internalId, else the message_id
    fingerprint     text NOT NULL,         -- dlq/record.py fingerprint(category, code, message)
    category        text NOT NULL,
    code            text NOT NULL,
    subcode         integer,
    message         text NOT NULL,         -- as the x-error-message header holds it (bounded)
    type            text,                  -- wabaPayload.type; NULL when unreadable
    phone_number_id text,
    routing_key     text,                  -- the original routing key
    retries         integer NOT NULL DEFAULT 0,  -- x-retry-count of the copy
    replays         integer NOT NULL DEFAULT 0,  -- x-replay-count of the copy
    headers         jsonb NOT NULL DEFAULT '{}'::jsonb,  -- the copy's headers, JSON-safe
    body            bytea NOT NULL,        -- the original body, cut at WA_MAX_MESSAGE_BYTES
    body_bytes      integer NOT NULL,      -- the original body's size
    died_at         timestamptz NOT NULL DEFAULT now(),
    state           text NOT NULL DEFAULT 'dead'
                    CHECK (state IN ('dead', 'replayed', 'resolved', 'edited')),
    resolved_at     timestamptz,
    resolution      text
);

-- Every read is of rows in state 'dead', so every index but the key is partial: a replayed or
-- purged row leaves them. Only deaths write these (nothing on a send's path).
-- A group's page (one fingerprint, newest first, keyset on id).
CREATE INDEX wa_dead_group ON wa_dead (fingerprint, id) WHERE state = 'dead';
-- A group's first and last death and its last 24 hours.
CREATE INDEX wa_dead_group_time ON wa_dead (fingerprint, died_at) WHERE state = 'dead';
-- Every dead message, newest first (`dlq list` with no filter or a rare one).
CREATE INDEX wa_dead_newest ON wa_dead (id) WHERE state = 'dead';
-- One tenant's or one category's dead messages, newest first.
CREATE INDEX wa_dead_tenant ON wa_dead (tenant_id, id) WHERE state = 'dead';
CREATE INDEX wa_dead_category ON wa_dead (category, id) WHERE state = 'dead';
-- `dlq show ID`, the marks of replay and purge, and a second death of the same message.
CREATE INDEX wa_dead_key ON wa_dead (internal_id, tenant_id) WHERE state = 'dead';
-- The oldest, and --since / --older-than.
CREATE INDEX wa_dead_died ON wa_dead (died_at) WHERE state = 'dead';

-- Counts of the rows in state 'dead' by (fingerprint, tenant, type), kept by the statements
-- that write wa_dead (the daemon's insert, the marks of replay and purge): the group list and
-- the stats add up a few thousand of these instead of a million rows (docs/LEDGER.md has the
-- figures). '' stands for NULL in the key. Rows at 0 are skipped by readers and removed by
-- the marks.
CREATE TABLE wa_dead_groups (
    fingerprint text NOT NULL,
    tenant_id   text NOT NULL,
    type        text NOT NULL,
    category    text NOT NULL,
    code        text NOT NULL,
    message     text NOT NULL,   -- a sample: the text of the first death counted here
    dead        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (fingerprint, tenant_id, type)
);
