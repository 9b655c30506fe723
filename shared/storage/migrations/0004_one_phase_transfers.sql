-- One-phase commit: a transfer whose two accounts share a shard is applied
-- by that shard's owner in one transaction, with no prepare and no
-- coordinator decision. Its outcome and idempotency key are recorded here,
-- in the same transaction as the balances, by the worker (the
-- coordinator's log is not the worker's to write). The coordinator only
-- reads this table: a key's first use, on either path, is the one that
-- stands (its decision insert skips a key found here, as the worker skips
-- a key found in `transfers`), and a transfer is looked up by id here too.
CREATE TABLE local_transfers (
    id              uuid PRIMARY KEY,
    shard           integer NOT NULL REFERENCES shards (shard),
    -- Unique over every shard: a key names one transfer, wherever it ran.
    idempotency_key text NOT NULL UNIQUE,
    from_account    text NOT NULL,
    to_account      text NOT NULL,
    amount          bigint NOT NULL CHECK (amount > 0),
    state           text NOT NULL CHECK (state IN ('committed', 'aborted')),
    reason          jsonb,
    -- The coordinator term that asked for it.
    token           bigint NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
