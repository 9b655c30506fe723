-- The coordinator's intent: before it prepares a transfer, the coordinator
-- records the transfer's legs here under its token, and a shard prepares
-- only legs that such a record holds, under the same token, and only if
-- the record's legs sum to zero (`faultline_transactions::log_backing`).
-- So a prepare forged on the bus changes nothing: the shard finds no
-- record of it.
--
-- UNLOGGED: an intent is only needed until the prepares it backs are
-- durable (each shard's branch records its own legs), so it needs no WAL
-- and no fsync; writing it costs one round trip, not a disk flush. A
-- crash empties the table, and the prepares of transfers caught in flight
-- are then refused, so those transfers abort, which is what a crash
-- before the decision means anyway (presumed abort).
--
-- The coordinator removes an intent when its transfer is finished, and
-- every intent of older terms when a new term begins.
CREATE UNLOGGED TABLE transfer_intents (
    xid         uuid PRIMARY KEY,
    token       bigint NOT NULL,
    -- Every leg of the transfer, on every shard: [{"account", "delta"}].
    legs        jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
