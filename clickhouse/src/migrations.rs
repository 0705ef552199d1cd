//! The history schema: versioned migrations under `migrations/` (`NNNN_name.sql`, applied in
//! order, each recorded in `schema_migrations`; a version is applied once), in a database
//! created if missing. They are applied lazily: [`Schema::ensure`] runs before every call (see
//! [`crate::guard::Guard::run`]); the first call that finds ClickHouse answering applies them,
//! and until then every call fails with [`HistoryError::Unavailable`], so a node can start during
//! an outage and heal after it.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use chorus_store::history::HistoryError;
use clickhouse::Client;

use crate::guard::Guard;

/// The migrations, in order; the number is the schema version each one brings.
const MIGRATIONS: &[(u32, &str)] = &[
    (1, include_str!("../migrations/0001_history.sql")),
    (2, include_str!("../migrations/0002_muted.sql")),
    (3, include_str!("../migrations/0003_blocked.sql")),
    (4, include_str!("../migrations/0004_pinned.sql")),
    (5, include_str!("../migrations/0005_replies.sql")),
    (6, include_str!("../migrations/0006_reactions.sql")),
    (7, include_str!("../migrations/0007_retention.sql")),
    (8, include_str!("../migrations/0008_attachments.sql")),
];

/// Whether the schema is in place, and what applying it needs.
pub(crate) struct Schema {
    /// Set once the database exists and every migration is applied; never unset.
    ready: AtomicBool,
    /// One caller at a time applies the schema; the others wait for its outcome.
    applying: tokio::sync::Mutex<()>,
    /// The server without a database selected (to create the database).
    server: Client,
    /// The history's database, as the migrations use it.
    client: Client,
    /// The database's name, for `CREATE DATABASE`.
    database: String,
}

impl Schema {
    /// The schema of `database`, not applied yet: `server` has no database selected (to create
    /// it), `client` selects it.
    pub(crate) fn new(server: Client, client: Client, database: String) -> Schema {
        Schema {
            ready: AtomicBool::new(false),
            applying: tokio::sync::Mutex::new(()),
            server,
            client,
            database,
        }
    }

    /// Creates the database and applies pending migrations, once; fails with
    /// [`HistoryError::Unavailable`] while ClickHouse does not answer.
    pub(crate) async fn ensure(&self, guard: &Guard) -> Result<(), HistoryError> {
        if self.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let _applying = self.applying.lock().await;
        if self.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        self.migrate(guard).await.map_err(|error| match error {
            HistoryError::Unavailable(reason) => HistoryError::Unavailable(
                reason.in_context("the history schema is not in place yet"),
            ),
            other => other,
        })?;
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Creates the database and `schema_migrations` if missing, then applies the migrations
    /// not recorded there yet, in order, each through `guard` (breaker and timeout).
    async fn migrate(&self, guard: &Guard) -> Result<(), HistoryError> {
        let Schema {
            server,
            client,
            database,
            ..
        } = self;
        guard
            .run_unchecked(
                server
                    .query(&format!(
                        "CREATE DATABASE IF NOT EXISTS {}",
                        quote_identifier(database)
                    ))
                    .execute(),
            )
            .await?;
        guard.run_unchecked(
            client
                .query(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, applied_ms Int64) \
                     ENGINE = MergeTree ORDER BY version",
                )
                .execute(),
        )
        .await?;
        let applied: BTreeSet<u32> = guard
            .run_unchecked(
                client
                    .query("SELECT DISTINCT version FROM schema_migrations")
                    .fetch_all::<u32>(),
            )
            .await?
            .into_iter()
            .collect();
        for (version, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            for statement in statements(sql) {
                guard
                    .run_unchecked(client.query(&statement).execute())
                    .await?;
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_millis() as i64);
            guard
                .run_unchecked(
                    client
                        .query("INSERT INTO schema_migrations (version, applied_ms) VALUES (?, ?)")
                        .bind(*version)
                        .bind(now)
                        .execute(),
                )
                .await?;
            tracing::info!(version, "history schema migrated");
        }
        Ok(())
    }
}

/// Splits a migration file into statements (`;` at the end of a line; `--` comments dropped).
fn statements(sql: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        let line = line.split("--").next().unwrap_or_default().trim_end();
        if line.trim().is_empty() {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if line.ends_with(';') {
            statements.push(current.trim().trim_end_matches(';').to_owned());
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        statements.push(current.trim().to_owned());
    }
    statements
}

/// Backquotes an identifier for DDL (database names come from configuration).
pub(crate) fn quote_identifier(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_files_split_into_statements() {
        let sql = "-- a comment\nCREATE TABLE a (x UInt8) ENGINE = Log;\n\n-- b\nCREATE TABLE b (\n  y UInt8 -- trailing\n) ENGINE = Log;\n";
        assert_eq!(
            statements(sql),
            vec![
                "CREATE TABLE a (x UInt8) ENGINE = Log".to_owned(),
                "CREATE TABLE b (\n  y UInt8\n) ENGINE = Log".to_owned(),
            ]
        );
        for (_, migration) in MIGRATIONS {
            assert!(!statements(migration).is_empty());
        }
    }
}
