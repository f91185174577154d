-- Profiles, balances and every movement of money. Money is an integer number of minor units
-- (cents); no floating point anywhere.
CREATE TABLE users (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    email       text        NOT NULL CHECK (length(email) BETWEEN 3 AND 320),
    metadata    jsonb       NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- Sign-up and log-in look users up by email, case-insensitively; uniqueness is enforced here.
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));

CREATE TABLE accounts (
    user_id        bigint PRIMARY KEY REFERENCES users (id),
    balance_minor  bigint NOT NULL DEFAULT 0
                   CHECK (balance_minor >= 0 AND balance_minor <= 1000000000000000)
);

CREATE TABLE movements (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind          text        NOT NULL CHECK (kind IN ('deposit', 'withdrawal', 'transfer')),
    from_user     bigint      REFERENCES accounts (user_id),
    to_user       bigint      REFERENCES accounts (user_id),
    amount_minor  bigint      NOT NULL CHECK (amount_minor > 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (from_user IS NOT NULL OR to_user IS NOT NULL),
    CHECK (from_user IS DISTINCT FROM to_user)
);
-- A user's statement: their movements, newest first, either side.
CREATE INDEX movements_from_user_created_at ON movements (from_user, created_at DESC);
CREATE INDEX movements_to_user_created_at ON movements (to_user, created_at DESC);

-- A retried write with the same key answers what the first one answered, and applies once.
CREATE TABLE idempotency_keys (
    key         text        PRIMARY KEY CHECK (length(key) BETWEEN 1 AND 200),
    request     text        NOT NULL,
    status      smallint    NOT NULL,
    response    jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
