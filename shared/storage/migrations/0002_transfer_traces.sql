-- The trace each transfer began in, as its W3C `traceparent`. Recovery,
-- which finishes transfers whose driver died, runs in traces of its own;
-- their spans link back to this one, so a trace viewer leads from the
-- original request to the recovery that completed it. Empty for transfers
-- begun before this column existed, or without tracing.
ALTER TABLE transfers ADD COLUMN traceparent text;
