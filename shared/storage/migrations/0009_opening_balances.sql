-- The money each account was opened with, so that the audit can set the
-- total it counts against the money put in: the two are equal at every
-- instant if no transfer ever made or lost money (what the live console
-- shows as "audited total against the money opened"). Accounts opened
-- before this column existed have no record of it (NULL); the audit then
-- gives no figure rather than a wrong one. The worker role's INSERT on
-- the table covers the new column.
ALTER TABLE accounts
    ADD COLUMN opened bigint CHECK (opened >= 0);
