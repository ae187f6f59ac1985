-- The event log: one row per change to a case, written in the change's
-- transaction. `seq` counts each owner's changes: case_event_heads holds the
-- owner's last one, and taking the next locks that row until commit, so an
-- owner's events commit in `seq` order and a reader that has seen `seq = n`
-- has seen every event up to n (see case-svc/src/events.rs).
CREATE TABLE case_event_heads (
    user_id         text   PRIMARY KEY REFERENCES "user" ("id") ON DELETE CASCADE,
    seq             bigint NOT NULL,
    -- The highest seq of any event removed with a purged case: resuming
    -- from below it would skip what was removed.
    trimmed_through bigint NOT NULL DEFAULT 0
);

CREATE TABLE case_events (
    user_id    text        NOT NULL REFERENCES "user" ("id") ON DELETE CASCADE,
    seq        bigint      NOT NULL,
    case_id    uuid        NOT NULL,
    kind       text        NOT NULL CHECK (kind IN ('CREATED', 'UPDATED', 'DELETED', 'UNDELETED', 'PURGED')),
    actor      text        NOT NULL,
    request_id text,
    status     case_status NOT NULL,
    type       case_type   NOT NULL,
    version    bigint      NOT NULL,
    changes    text        NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, seq)
);

-- A case's history, newest first.
CREATE INDEX case_events_case ON case_events (case_id, seq);
