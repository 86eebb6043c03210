//! The embedded schema and the check that refuses a database of a newer berth.

use sqlx::PgPool;
use sqlx::migrate::Migrator;

use crate::ConnectError;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

pub(crate) fn migrator() -> &'static Migrator {
    &MIGRATOR
}

/// The newest schema version this build knows.
pub fn latest_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

pub(crate) async fn refuse_newer(pool: &PgPool, url: &str) -> Result<(), ConnectError> {
    let db = |source| ConnectError::Database {
        url: url.to_owned(),
        source,
    };
    let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
        .fetch_one(pool)
        .await
        .map_err(db)?;
    if table.is_none() {
        return Ok(());
    }
    let found: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(pool)
        .await
        .map_err(db)?;
    let supported = latest_version();
    match found {
        Some(found) if found > supported || !MIGRATOR.version_exists(found) => {
            Err(ConnectError::NewerSchema {
                url: url.to_owned(),
                found,
                supported,
            })
        }
        _ => Ok(()),
    }
}
