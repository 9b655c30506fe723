-- Faultline's durable state: the coordinator's decision log and the
-- account shards. One database holds both (the shards are logical). The
-- coordinator writes `transfers` and `coordinator_fence`, the workers
-- `shards` (ownership), `accounts` and `branches`; either may create the
-- missing `shards` rows at start.

-- The coordinator's decision log: one row per global transaction.
CREATE TABLE transfers (
    id               uuid PRIMARY KEY,
    idempotency_key  text NOT NULL UNIQUE,
    from_account     text NOT NULL,
    to_account       text NOT NULL,
    amount           bigint NOT NULL CHECK (amount > 0),
    -- Moves only out of 'preparing', by compare-and-set (see the
    -- coordinator's `log` module).
    state            text NOT NULL CHECK (state IN ('preparing', 'committed', 'aborted')),
    reason           jsonb,
    begun_by_token   bigint NOT NULL,
    decided_by_token bigint,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    decided_at       timestamptz,
    -- Set once every shard acknowledged the decision.
    finished_at      timestamptz
);
-- Ids are UUIDv7, so id order is time order: recovery pages through the
-- unfinished ones by id.
CREATE INDEX transfers_unfinished ON transfers (id) WHERE finished_at IS NULL;

-- The newest coordinator fencing token the log has accepted. A decision
-- written under an older token is refused.
CREATE TABLE coordinator_fence (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    token     bigint NOT NULL
);
INSERT INTO coordinator_fence (token) VALUES (0);

-- One row per shard: who owns it, under which epoch, and the newest
-- coordinator token its owner has seen. Every participant batch first
-- locks this row (FOR UPDATE) and checks the owner and epoch, so a worker
-- that lost the shard writes nothing, and the row lock orders the new
-- owner's takeover after the old owner's last write.
CREATE TABLE shards (
    shard             integer PRIMARY KEY CHECK (shard >= 0),
    owner             text,
    epoch             bigint NOT NULL DEFAULT 0,
    coordinator_token bigint NOT NULL DEFAULT 0
);

CREATE TABLE accounts (
    id      text PRIMARY KEY,
    shard   integer NOT NULL REFERENCES shards (shard),
    balance bigint NOT NULL CHECK (balance >= 0),
    -- Reserved by prepared transfers out of the account.
    held    bigint NOT NULL DEFAULT 0 CHECK (held >= 0 AND held <= balance)
);

-- Each shard's part of each global transaction, and the barrier that makes
-- duplicate and reordered messages harmless.
CREATE TABLE branches (
    xid         uuid NOT NULL,
    shard       integer NOT NULL REFERENCES shards (shard),
    state       text NOT NULL CHECK (state IN ('prepared', 'committed', 'aborted')),
    legs        jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (xid, shard)
);
CREATE INDEX branches_prepared ON branches (recorded_at) WHERE state = 'prepared';
