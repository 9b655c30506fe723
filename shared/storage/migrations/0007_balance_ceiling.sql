-- The ceiling on a balance, in the database as well as in the code
-- (`faultline_protocol::bank::MAX_BALANCE`, which `shard_batch` checks with
-- overflow-checked arithmetic): a write that slipped past the code's check
-- would still be refused here, as the floor (balance >= 0) already is. A
-- test holds the two equal (`the_database_refuses_a_balance_past_the_ceiling`).
ALTER TABLE accounts
    ADD CONSTRAINT accounts_balance_at_most_the_ceiling
    CHECK (balance <= 1000000000000000000);
