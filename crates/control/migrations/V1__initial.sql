-- Initial schema for the coordination server's SQLite store.
--
-- Conventions (crates/control/src/store/sqlite.rs relies on them):
-- - Timestamps are RFC 3339 text in UTC with exactly nine fractional digits and a `Z`
--   (`2026-11-02T10:00:00.123456789Z`), so text order is time order and `sqlite3` shows them
--   readably. Nullable timestamp columns mean "never" / "not yet".
-- - Lists (tags, endpoints, routes) are JSON arrays of strings; hostinfo and audit details are
--   JSON objects as the client or the server produced them.
-- - Keys are their typed text forms (`mkey:…`, `nodekey:…`, `discokey:…`, `privkey:…`).
-- - Ids use AUTOINCREMENT so a deleted node's or user's id is never handed out again: clients
--   and API users treat ids as stable identities.
-- Later schema changes go into V2__…, V3__…; never edit this file once released.

CREATE TABLE users (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    login_name   TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    created      TEXT NOT NULL
);

CREATE TABLE auth_keys (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id        TEXT NOT NULL UNIQUE,
    secret_hash   TEXT NOT NULL,
    -- Deleting a user keeps its (revoked) auth keys for the record, owner cleared. Nodes, in
    -- contrast, must be deleted before their user (no ON DELETE: the delete fails).
    user_id       INTEGER REFERENCES users(id) ON DELETE SET NULL,
    reusable      INTEGER NOT NULL,
    ephemeral     INTEGER NOT NULL,
    preauthorized INTEGER NOT NULL,
    tags          TEXT NOT NULL DEFAULT '[]',
    description   TEXT NOT NULL DEFAULT '',
    created       TEXT NOT NULL,
    expires       TEXT,
    revoked       TEXT,
    uses          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX auth_keys_user_id ON auth_keys(user_id);

CREATE TABLE nodes (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_key     TEXT NOT NULL,
    node_key        TEXT NOT NULL UNIQUE,
    disco_key       TEXT NOT NULL,
    user_id         INTEGER REFERENCES users(id),
    tags            TEXT NOT NULL DEFAULT '[]',
    hostname        TEXT NOT NULL,
    given_name      TEXT NOT NULL UNIQUE,
    ipv4            TEXT UNIQUE,
    ipv6            TEXT UNIQUE,
    endpoints       TEXT NOT NULL DEFAULT '[]',
    hostinfo        TEXT NOT NULL DEFAULT '{}',
    home_derp       INTEGER NOT NULL DEFAULT 0,
    created         TEXT NOT NULL,
    last_seen       TEXT,
    key_expiry      TEXT,
    ephemeral       INTEGER NOT NULL,
    authorized      INTEGER NOT NULL,
    approved_routes TEXT NOT NULL DEFAULT '[]',
    -- Deleting an auth key keeps the nodes that registered with it.
    auth_key_id     INTEGER REFERENCES auth_keys(id) ON DELETE SET NULL
);
CREATE INDEX nodes_machine_key ON nodes(machine_key);
CREATE INDEX nodes_user_id ON nodes(user_id);
CREATE INDEX nodes_auth_key_id ON nodes(auth_key_id);

CREATE TABLE api_keys (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id      TEXT NOT NULL UNIQUE,
    secret_hash TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created     TEXT NOT NULL,
    expires     TEXT,
    revoked     TEXT
);

-- The policy in force: at most one row.
CREATE TABLE policy (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    text    TEXT NOT NULL,
    updated TEXT NOT NULL
);

-- Every policy that was replaced, for audit and rollback by hand.
CREATE TABLE policy_history (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    text     TEXT NOT NULL,
    updated  TEXT NOT NULL,
    replaced TEXT NOT NULL
);

CREATE TABLE audit_log (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     TEXT NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT 'null'
);
CREATE INDEX audit_log_at ON audit_log(at);

-- Server-wide private keys (`noise`, `derp`), as `privkey:` text. The file is mode 0600.
CREATE TABLE server_keys (
    name    TEXT PRIMARY KEY,
    privkey TEXT NOT NULL
);
