-- Casebook's cases on SQLite. Timestamps are fixed-width UTC text
-- (YYYY-MM-DDTHH:MM:SS.ffffffZ) so text order is time order; enums are
-- checked text; ids are hyphenated lowercase UUID text.
CREATE TABLE cases (
    id          text NOT NULL PRIMARY KEY,
    user_id     text NOT NULL REFERENCES "user" ("id") ON DELETE CASCADE,
    title       text NOT NULL,
    description text NOT NULL,
    status      text NOT NULL CHECK (status IN ('OPEN', 'IN_PROGRESS', 'RESOLVED', 'CLOSED')),
    type        text NOT NULL CHECK (type IN ('QUESTION', 'INCIDENT', 'REQUEST', 'COMPLAINT')),
    request_id  text,
    version     integer NOT NULL,
    created_at  text NOT NULL,
    updated_at  text NOT NULL,
    deleted_at  text,
    purge_at    text,
    CHECK ((deleted_at IS NULL) = (purge_at IS NULL))
);

CREATE INDEX cases_owner_active_created ON cases (user_id, created_at, id) WHERE deleted_at IS NULL;
CREATE INDEX cases_owner_active_updated ON cases (user_id, updated_at, id) WHERE deleted_at IS NULL;
CREATE INDEX cases_owner_active_title ON cases (user_id, title, id) WHERE deleted_at IS NULL;
CREATE INDEX cases_owner_created ON cases (user_id, created_at, id);
CREATE INDEX cases_purge ON cases (purge_at) WHERE purge_at IS NOT NULL;
CREATE UNIQUE INDEX cases_request_id ON cases (user_id, request_id) WHERE request_id IS NOT NULL;

CREATE TABLE case_svc_secrets (
    name  text NOT NULL PRIMARY KEY,
    value text NOT NULL
);
