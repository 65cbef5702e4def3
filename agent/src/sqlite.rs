//! What every SQLite connection the agent opens is given, whatever file it
//! is on (the outbox, a business database it reads, a database it writes).

use rusqlite::Connection;
use rusqlite::config::DbConfig;

/// Plans each statement once, from its text alone. The bundled SQLite is
/// built with STAT4, under which a statement whose plan could depend on a
/// bound value (`LIMIT ?` is enough) is marked expired whenever that
/// parameter is bound again, and is parsed and planned anew at its next
/// step: every call of a cached statement paid for a fresh prepare, 7 % of
/// the agent's CPU under a trickle. The agent's statements are written for
/// one plan, and it never runs ANALYZE.
pub fn plan_once(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map(|_| ())
}
