//! What every long-lived SQLite connection of the agent is given, whatever
//! file it is on (the outbox, a business database it reads, a database it
//! writes); the offline tools' and the salvage's one-off connections run no
//! statement twice and go without.

use rusqlite::Connection;
use rusqlite::config::DbConfig;

/// Plans each statement once, from its text alone. SQLite treats a bound
/// value its plan may depend on as part of the plan: a `LIMIT ?` is read as
/// a constant when planning (`sqlite3ExprIsInteger`), and binding that
/// parameter again, even to the same value, expires the statement, which
/// is then parsed and planned anew at its next step. Every call of a cached
/// statement paid for a fresh prepare: 7 % of the agent's CPU under a
/// trickle. The agent's statements are written for one plan. On a business
/// database its owners have analyzed, the plan no longer follows the bound
/// values either; the agent's reads go by an index in its order anyway.
pub fn plan_once(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map(|_| ())
}
