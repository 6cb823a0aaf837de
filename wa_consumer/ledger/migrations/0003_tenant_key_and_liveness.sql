-- One record per (tenant_id, internal_id): two tenants may use the same internalId without
-- touching each other (SPEC §9). Attempts carry the tenant too, so they join on the whole key.
ALTER TABLE wa_attempts ADD COLUMN tenant_id text;
UPDATE wa_attempts a SET tenant_id = m.tenant_id
FROM wa_messages m WHERE m.internal_id = a.internal_id;
ALTER TABLE wa_attempts ALTER COLUMN tenant_id SET NOT NULL;
ALTER TABLE wa_attempts DROP CONSTRAINT IF EXISTS wa_attempts_internal_id_fkey;
ALTER TABLE wa_attempts DROP CONSTRAINT wa_attempts_pkey;
ALTER TABLE wa_messages DROP CONSTRAINT wa_messages_pkey;
ALTER TABLE wa_messages ADD PRIMARY KEY (tenant_id, internal_id);
ALTER TABLE wa_attempts ADD PRIMARY KEY (tenant_id, internal_id, id);
ALTER TABLE wa_attempts ADD FOREIGN KEY (tenant_id, internal_id)
    REFERENCES wa_messages (tenant_id, internal_id) ON DELETE CASCADE;
-- `status ID` and the DLQ tools may know only the internalId. internal_id never changes, so
-- this index costs an insert, not an update (results stay HOT).
CREATE INDEX wa_messages_internal_id ON wa_messages (internal_id);

-- Liveness: each daemon writes its heartbeat here. A claim whose holder has not been seen
-- for a few heartbeats is taken over at once instead of waiting out its lease.
-- Each daemon says how long it counts as alive (its own heartbeat times three), so daemons
-- with different heartbeat settings judge each other by the holder's word.
CREATE TABLE wa_consumers (
    id          text PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    seen_at     timestamptz NOT NULL DEFAULT now(),
    alive_until timestamptz NOT NULL
);

-- A dead message's copy is confirmed in the DLQ ('dead'; 'dying' until then). A redelivery
-- of a dead message (its ack lost in a broker cut) is acked without a second copy; a replay
-- (a higher x-replay-count than the life it died in) may be claimed again.
ALTER TABLE wa_messages ADD COLUMN replays integer NOT NULL DEFAULT 0;
