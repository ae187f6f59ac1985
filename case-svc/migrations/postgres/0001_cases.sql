-- Casebook's cases. Better Auth's "user" table must already exist: a case
-- belongs to a Better Auth user and goes when the user goes.
CREATE TYPE case_status AS ENUM ('OPEN', 'IN_PROGRESS', 'RESOLVED', 'CLOSED');
CREATE TYPE case_type AS ENUM ('QUESTION', 'INCIDENT', 'REQUEST', 'COMPLAINT');

CREATE TABLE cases (
    id          uuid        PRIMARY KEY,
    user_id     text        NOT NULL REFERENCES "user" ("id") ON DELETE CASCADE,
    title       text        COLLATE "C" NOT NULL,
    description text        NOT NULL,
    status      case_status NOT NULL,
    type        case_type   NOT NULL,
    request_id  text,
    version     bigint      NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    deleted_at  timestamptz,
    purge_at    timestamptz,
    CHECK ((deleted_at IS NULL) = (purge_at IS NULL))
);

-- The list query's index: the owner's active cases in each sort order.
CREATE INDEX cases_owner_active_created ON cases (user_id, created_at, id) WHERE deleted_at IS NULL;
CREATE INDEX cases_owner_active_updated ON cases (user_id, updated_at, id) WHERE deleted_at IS NULL;
CREATE INDEX cases_owner_active_title ON cases (user_id, title, id) WHERE deleted_at IS NULL;
-- show_deleted lists and the purge sweep.
CREATE INDEX cases_owner_created ON cases (user_id, created_at, id);
CREATE INDEX cases_purge ON cases (purge_at) WHERE purge_at IS NOT NULL;
-- Idempotent creates: one case per (owner, request id).
CREATE UNIQUE INDEX cases_request_id ON cases (user_id, request_id) WHERE request_id IS NOT NULL;

-- Secrets case-svc generates once and every replica shares (page-token key).
CREATE TABLE case_svc_secrets (
    name  text PRIMARY KEY,
    value text NOT NULL
);
