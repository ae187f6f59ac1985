-- The event log (see the PostgreSQL migration for why it is shaped so).
CREATE TABLE case_event_heads (
    user_id         text    NOT NULL PRIMARY KEY REFERENCES "user" ("id") ON DELETE CASCADE,
    seq             integer NOT NULL,
    trimmed_through integer NOT NULL DEFAULT 0
);

CREATE TABLE case_events (
    user_id    text    NOT NULL REFERENCES "user" ("id") ON DELETE CASCADE,
    seq        integer NOT NULL,
    case_id    text    NOT NULL,
    kind       text    NOT NULL CHECK (kind IN ('CREATED', 'UPDATED', 'DELETED', 'UNDELETED', 'PURGED')),
    actor      text    NOT NULL,
    request_id text,
    status     text    NOT NULL CHECK (status IN ('OPEN', 'IN_PROGRESS', 'RESOLVED', 'CLOSED')),
    type       text    NOT NULL CHECK (type IN ('QUESTION', 'INCIDENT', 'REQUEST', 'COMPLAINT')),
    version    integer NOT NULL,
    changes    text    NOT NULL,
    created_at text    NOT NULL,
    PRIMARY KEY (user_id, seq)
);

CREATE INDEX case_events_case ON case_events (case_id, seq);
