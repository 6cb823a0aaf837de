-- One record per internalId, one per call to the Cloud API.
CREATE TABLE wa_messages (
    internal_id         text PRIMARY KEY,
    tenant_id           text NOT NULL,
    phone_number_id     text,
    recipient           text,
    type                text,
    status              text NOT NULL,          -- claimed | sent | retry_scheduled | waiting | dead | pending
    wamid               text,
    retries             integer NOT NULL DEFAULT 0,
    deliveries          integer NOT NULL DEFAULT 0,  -- claims since the last recorded outcome
    claimed_by          text,
    claim_expires_at    timestamptz,
    next_attempt_at     timestamptz,
    last_error_code     text,
    last_error_category text,
    last_error_message  text,
    resolution          text,
    metadata            jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz
);

CREATE TABLE wa_attempts (
    id           bigserial PRIMARY KEY,
    internal_id  text NOT NULL REFERENCES wa_messages (internal_id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    started_at   timestamptz NOT NULL,
    latency_ms   real NOT NULL,
    outcome      text NOT NULL,                 -- sent | refresh | retry | dead
    http_status  integer,
    code         text,
    subcode      integer,
    category     text,
    message      text,
    ambiguous    boolean NOT NULL DEFAULT false,
    consumer     text
);

CREATE INDEX wa_attempts_internal_id ON wa_attempts (internal_id, id);
CREATE INDEX wa_messages_updated_at ON wa_messages (updated_at);
CREATE INDEX wa_messages_tenant_status ON wa_messages (tenant_id, status, updated_at);
CREATE INDEX wa_messages_status ON wa_messages (status) WHERE status <> 'sent';
