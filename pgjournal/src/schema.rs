//! The tables and the statements. Every statement that writes the journal
//! carries the fence: it inserts only while the lease row still names this
//! router's epoch and holder and has not expired, and it takes a `FOR
//! SHARE` lock on that row, so a takeover (an `UPDATE` of the row) waits
//! for a journal transaction in progress to end, and one begun after the
//! takeover inserts nothing.

/// The version this router writes. A database at a newer version is
/// refused (an older router must not write a format it does not know).
pub const VERSION: i32 = 1;

/// Creates what is missing, under a transaction-scoped advisory lock so
/// that routers starting together do not race on the DDL (the lock is for
/// the DDL only, never for leadership).
pub const CREATE: &str = "
SET LOCAL client_min_messages = warning;
SELECT pg_advisory_xact_lock(7402353);
CREATE TABLE IF NOT EXISTS emq_schema (
    id integer PRIMARY KEY CHECK (id = 1),
    version integer NOT NULL
);
INSERT INTO emq_schema VALUES (1, 1) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS emq_lease (
    id integer PRIMARY KEY CHECK (id = 1),
    epoch bigint NOT NULL,
    holder text NOT NULL,
    expires_at timestamptz NOT NULL,
    failovers bigint NOT NULL DEFAULT 0,
    since timestamptz
);
INSERT INTO emq_lease (id, epoch, holder, expires_at) VALUES (1, 0, '', '-infinity') ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS emq_journal (
    seq bigserial PRIMARY KEY,
    epoch bigint NOT NULL,
    batch bigint NOT NULL,
    part integer NOT NULL,
    checkpoint boolean NOT NULL,
    records integer NOT NULL,
    body bytea NOT NULL,
    UNIQUE (epoch, batch, part)
);
CREATE TABLE IF NOT EXISTS emq_routers (
    holder text PRIMARY KEY,
    http_addr text NOT NULL,
    frontend_addr text NOT NULL,
    role text NOT NULL,
    seen_at timestamptz NOT NULL
);
";

pub const SCHEMA_VERSION: &str = "SELECT version FROM emq_schema WHERE id = 1";

/// Takes the lease when it has expired by the database's clock: a new
/// epoch (the fencing token). `$1` holder, `$2` lease seconds.
pub const ACQUIRE: &str = "
UPDATE emq_lease SET epoch = epoch + 1, holder = $1,
    expires_at = clock_timestamp() + make_interval(secs => $2::float8),
    failovers = failovers + CASE WHEN holder = '' THEN 0 ELSE 1 END,
    since = clock_timestamp()
WHERE id = 1 AND expires_at < clock_timestamp()
RETURNING epoch";

/// Extends our lease. `$1` epoch, `$2` holder, `$3` lease seconds.
pub const RENEW: &str = "
UPDATE emq_lease SET expires_at = clock_timestamp() + make_interval(secs => $3::float8)
WHERE id = 1 AND epoch = $1 AND holder = $2
RETURNING epoch";

/// Gives the lease up (a planned switchover): the next attempt of any
/// standby takes it.
pub const RELEASE: &str = "UPDATE emq_lease SET expires_at = '-infinity' WHERE id = 1 AND epoch = $1 AND holder = $2";

/// Who leads: epoch, holder, seconds left, failovers.
pub const LEADER: &str = "
SELECT epoch, holder,
    CASE WHEN isfinite(expires_at) THEN extract(epoch FROM expires_at - clock_timestamp())::float8
         ELSE -1e9::float8 END,
    failovers
FROM emq_lease WHERE id = 1";

/// Appends one row under the fence. `$1` epoch, `$2` holder, `$3` batch,
/// `$4` part, `$5` checkpoint, `$6` records, `$7` body. Inserts nothing
/// when fenced — or when this very row was committed already (a retry
/// after an answer that never came): [`COMMITTED`] tells the two apart.
pub const APPEND: &str = "
INSERT INTO emq_journal (epoch, batch, part, checkpoint, records, body)
SELECT $1, $3, $4, $5, $6, $7 FROM emq_lease
WHERE id = 1 AND epoch = $1 AND holder = $2 AND expires_at > clock_timestamp()
FOR SHARE
ON CONFLICT (epoch, batch, part) DO NOTHING";

/// A checkpoint's parts, inserted unfenced inside its transaction (the
/// fence, [`FENCE`], comes last, so the lease row is locked only for the
/// delete and the commit). Same parameters as [`APPEND`] but `$2`.
pub const APPEND_PART: &str = "
INSERT INTO emq_journal (epoch, batch, part, checkpoint, records, body)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (epoch, batch, part) DO NOTHING";

/// The fence on its own: the lease row, locked `FOR SHARE` until the
/// transaction ends, if it still names us. `$1` epoch, `$2` holder.
pub const FENCE: &str = "
SELECT 1 FROM emq_lease
WHERE id = 1 AND epoch = $1 AND holder = $2 AND expires_at > clock_timestamp()
FOR SHARE";

/// Whether a row is in the journal. `$1` epoch, `$2` batch.
pub const COMMITTED: &str = "SELECT 1 FROM emq_journal WHERE epoch = $1 AND batch = $2 AND part = 0";

/// After a checkpoint's rows: deletes everything before them (same
/// transaction). `$1` epoch, `$2` batch.
pub const DELETE_BEFORE: &str = "
DELETE FROM emq_journal WHERE seq < (SELECT seq FROM emq_journal WHERE epoch = $1 AND batch = $2 AND part = 0)";

/// The whole journal, in commit order (a checkpoint deletes what came before it).
pub const REPLAY: &str = "SELECT body FROM emq_journal ORDER BY seq";

/// Bytes the journal holds.
pub const SIZE: &str = "SELECT COALESCE(sum(length(body)), 0)::int8 FROM emq_journal";

/// A router says it is there. `$1` holder, `$2` http, `$3` frontend, `$4` role.
pub const PRESENT: &str = "
INSERT INTO emq_routers VALUES ($1, $2, $3, $4, clock_timestamp())
ON CONFLICT (holder) DO UPDATE SET http_addr = $2, frontend_addr = $3, role = $4, seen_at = clock_timestamp()";

/// The routers seen lately (and forgets those gone for an hour).
pub const ROUTERS: &str = "
WITH gone AS (DELETE FROM emq_routers WHERE seen_at < clock_timestamp() - interval '1 hour')
SELECT holder, http_addr, frontend_addr, role,
    extract(epoch FROM clock_timestamp() - seen_at)::float8
FROM emq_routers WHERE seen_at > clock_timestamp() - interval '1 minute' ORDER BY holder";
