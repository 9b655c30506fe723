-- A decision that a shard refuses (its branch contradicts it: a commit for
-- a branch it never prepared, say) cannot be fixed by sending it again,
-- and recovery used to resend it on every sweep for ever. Such a transfer
-- is quarantined instead: the shard and its reason are recorded here,
-- recovery leaves it alone, the in-doubt list shows why, and an operator
-- resolves it after inspection (`resolution`: what they did, and when).
ALTER TABLE transfers
    ADD COLUMN quarantine jsonb,
    ADD COLUMN resolution jsonb;
