//! The embedded schema: migrations, the version check that refuses a newer database,
//! and a helper that builds a database at an older version (for upgrade fixtures).

use std::borrow::Cow;
use std::path::Path;

use sqlx::SqlitePool;
use sqlx::migrate::Migrator;

use crate::OpenError;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Every migration this build knows.
pub fn migrator() -> &'static Migrator {
    &MIGRATOR
}

/// The newest schema version this build knows.
pub fn latest_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Refuses a database that carries a migration this build does not know.
pub(crate) async fn refuse_newer(pool: &SqlitePool, path: &Path) -> Result<(), OpenError> {
    let db = |source| OpenError::Database {
        path: path.to_path_buf(),
        source,
    };
    let table: Option<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_optional(pool)
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
            Err(OpenError::NewerSchema {
                path: path.to_path_buf(),
                found,
                supported,
            })
        }
        _ => Ok(()),
    }
}

/// Applies only the migrations up to `version` to `pool`: a database exactly as an
/// older berth left it, for upgrade tests.
///
/// # Errors
/// Migration errors.
pub async fn migrate_up_to(
    pool: &SqlitePool,
    version: i64,
) -> Result<(), sqlx::migrate::MigrateError> {
    let older = Migrator {
        migrations: Cow::Owned(
            MIGRATOR
                .iter()
                .filter(|m| m.version <= version)
                .cloned()
                .collect(),
        ),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    };
    older.run(pool).await
}
