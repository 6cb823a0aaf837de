-- Delivery statuses (SPEC §13): one row per wamid, from the send's result or Meta's webhooks,
-- whichever comes first. A status whose send is not recorded yet waits here with no message
-- (tenant_id NULL) and is tied to it when the send's result lands, or by its
-- biz_opaque_callback_data when the send's answer was lost (an ambiguous attempt).
CREATE TABLE wa_deliveries (
    wamid                   text PRIMARY KEY,
    tenant_id               text,
    internal_id             text,
    status                  text NOT NULL,     -- accepted | sent | delivered | read | failed
    accepted_at             timestamptz,       -- our send's 200 (the ledger's clock)
    sent_at                 timestamptz,       -- the webhooks' own timestamps from here on
    delivered_at            timestamptz,
    read_at                 timestamptz,
    failed_at               timestamptz,
    recipient               text,
    phone_number_id         text,
    callback                text,              -- biz_opaque_callback_data as Meta echoed it
    error_code              text,
    error_category          text,
    error_title             text,
    error_message           text,
    pricing_billable        boolean,
    pricing_category        text,
    pricing_model           text,
    conversation_id         text,
    conversation_origin     text,
    conversation_expires_at timestamptz,
    received_at             timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX wa_deliveries_message ON wa_deliveries (tenant_id, internal_id);
-- failures list|stats and report costs read recent rows of one kind. Only failed rows have
-- a failed_at, and no index names status: a status that moves on is then written in place
-- (a HOT update, with the room fillfactor leaves), as results are in wa_messages (0002).
CREATE INDEX wa_deliveries_failed ON wa_deliveries (failed_at) WHERE failed_at IS NOT NULL;
-- received_at only grows with the table: a BRIN index (one summary per block range) serves
-- the time ranges of report costs and prune for a fraction of a b-tree's upkeep on each send.
CREATE INDEX wa_deliveries_received ON wa_deliveries USING brin (received_at);
ALTER TABLE wa_deliveries SET (fillfactor = 50);
-- Statuses not tied to a message yet (tried again for an hour): few, and leaving on the tie.
CREATE INDEX wa_deliveries_untied ON wa_deliveries (received_at) WHERE tenant_id IS NULL;

-- A producer's own biz_opaque_callback_data (the daemon sets the internalId where there is
-- none, and keeps no copy of that): how a status ties to its message without a wamid.
ALTER TABLE wa_messages ADD COLUMN callback text;
CREATE INDEX wa_messages_callback ON wa_messages (callback) WHERE callback IS NOT NULL;
