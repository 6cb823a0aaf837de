-- Meta's fbtrace_id of an attempt that failed with an error object: what Meta's support asks
-- for. Nullable, no default: adding it rewrites nothing, and sends (no error) leave it NULL.
ALTER TABLE wa_attempts ADD COLUMN IF NOT EXISTS fbtrace_id text;
