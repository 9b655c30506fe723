-- Least privilege in the database: a role per service, with the rights its
-- statements need and no others. The migrations run as the schema's owner
-- (the `migrate` step); the services log in as these roles, which own
-- nothing and may create nothing, so:
--
-- - a worker may not write the coordinator's decision log (`transfers`),
--   its fence or its intents: it only reads them, to check that the log
--   backs each prepare and decision (`log_backing`);
-- - a coordinator may not write balances, branches or one-phase
--   transfers: it only reads them (the audit, transfer lookups);
-- - neither may change the schema, or grant itself more.
--
-- Where a service writes only some columns, the grant names them: a
-- coordinator may raise a shard's `coordinator_token` when a new term
-- begins, but not move the shard's owner; both may insert missing shard
-- rows, but set nothing but the shard number.
--
-- The roles may log in, and have no password here: the `migrate` step
-- sets one from its settings where the server checks passwords, and where
-- it trusts local connections (a development machine) none is needed.
-- Roles belong to the whole server, not this database: a second database
-- on the same server (another test) finds them there already.

DO $$
BEGIN
    CREATE ROLE faultline_coordinator LOGIN;
EXCEPTION
    -- Created already, or by a migration of another database running now.
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

DO $$
BEGIN
    CREATE ROLE faultline_worker LOGIN;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

-- Both wait, at start, until the schema is as new as their code.
GRANT SELECT ON _sqlx_migrations TO faultline_coordinator, faultline_worker;

-- The coordinator: its decision log, fence and intents.
GRANT SELECT, INSERT, UPDATE ON transfers TO faultline_coordinator;
GRANT SELECT, UPDATE (token) ON coordinator_fence TO faultline_coordinator;
GRANT SELECT, INSERT, DELETE ON transfer_intents TO faultline_coordinator;
GRANT SELECT ON accounts, branches, local_transfers TO faultline_coordinator;
GRANT SELECT, INSERT (shard), UPDATE (coordinator_token) ON shards TO faultline_coordinator;

-- The worker: its shards' balances, branches and one-phase transfers.
GRANT SELECT ON transfers, coordinator_fence, transfer_intents TO faultline_worker;
GRANT SELECT, INSERT, UPDATE (balance, held) ON accounts TO faultline_worker;
GRANT SELECT, INSERT, UPDATE (state, legs, recorded_at) ON branches TO faultline_worker;
GRANT SELECT, INSERT ON local_transfers TO faultline_worker;
GRANT SELECT, INSERT (shard), UPDATE (owner, epoch, coordinator_token) ON shards TO faultline_worker;
