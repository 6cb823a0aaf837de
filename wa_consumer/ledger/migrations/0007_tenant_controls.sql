-- Tenant and number controls (SPEC §14) and the operators' audit trail.
--
-- One row per paused tenant (number = '') or number. A pause survives restarts and every
-- replica reads these rows every few seconds. ``generation`` grows with each pause or drain:
-- messages held under it wait in a held queue named with it, and a drain releases the held
-- queues of older generations while new messages are held under the new one.
CREATE SEQUENCE wa_pause_generation;
CREATE TABLE wa_pauses (
    tenant_id   text NOT NULL,
    number      text NOT NULL DEFAULT '',      -- '' : the whole tenant
    mode        text NOT NULL,                 -- paused | draining
    reason      text,
    actor       text NOT NULL,
    breaker     boolean NOT NULL DEFAULT false, -- opened by the daemon's breaker
    probe_at    timestamptz,                   -- breaker: when the next probe message may go
    generation  bigint NOT NULL DEFAULT nextval('wa_pause_generation'),
    since       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, number)
);

-- The held queues that exist (declared by a pause or by a daemon holding a message). One
-- whose pause is gone, or older than its pause's generation, is released by the daemons.
CREATE TABLE wa_holds (
    queue       text PRIMARY KEY,
    tenant_id   text NOT NULL,
    number      text NOT NULL DEFAULT '',
    generation  bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    mover       text,                          -- the daemon moving it back (one at a time)
    mover_until timestamptz
);
CREATE INDEX wa_holds_owner ON wa_holds (tenant_id, number);

-- Who did what, when and why: every operator action (CLI, console, API) and the breaker's.
CREATE TABLE wa_actions (
    id       bigserial PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    actor    text NOT NULL,
    action   text NOT NULL,
    target   text NOT NULL,
    reason   text,
    details  jsonb
);
CREATE INDEX wa_actions_at ON wa_actions (at DESC);
CREATE INDEX wa_actions_target ON wa_actions (target, at DESC);
