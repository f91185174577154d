-- Every balance change bumps the account's version, so a client can tell an older state from a
-- newer one (the read-your-writes checker compares versions).
ALTER TABLE accounts ADD COLUMN version bigint NOT NULL DEFAULT 0;
