-- The coordinator no longer writes a record before it prepares: a
-- transfer's first record is its decision, inserted (with its idempotency
-- key) once every vote is in. So no row is ever 'preparing' from now on;
-- any left by a coordinator of an earlier version belongs to a term that
-- has ended, and presumed abort makes it an abort.
UPDATE transfers
SET state = 'aborted',
    reason = '{"code": "abandoned", "message": "the coordinator that began this transfer stopped before deciding; recovery aborted it (presumed abort)"}',
    decided_at = clock_timestamp()
WHERE state = 'preparing';

-- A presumed abort, once a participant asks about a transaction the log
-- has never heard of, is written as a bare row: the id, 'aborted', and
-- nothing else. It is the barrier that makes a late commit of that id lose
-- (the decision is an insert; the id is taken). Only such a barrier may
-- lack the transfer's details.
ALTER TABLE transfers
    ALTER COLUMN idempotency_key DROP NOT NULL,
    ALTER COLUMN from_account DROP NOT NULL,
    ALTER COLUMN to_account DROP NOT NULL,
    ALTER COLUMN amount DROP NOT NULL,
    ADD CONSTRAINT transfers_only_barriers_are_bare CHECK (
        (idempotency_key IS NOT NULL AND from_account IS NOT NULL
            AND to_account IS NOT NULL AND amount IS NOT NULL)
        OR state = 'aborted'
    );
