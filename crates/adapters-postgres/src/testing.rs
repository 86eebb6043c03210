//! Scratch databases for tests, on the server named by `BERTH_TEST_POSTGRES_URL`
//! (`.ci/postgres start` prints one). Without it, tests that need PostgreSQL report
//! SKIPPED loudly, or fail when `BERTH_REQUIRE_POSTGRES=1` (CI).

use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

/// The variable naming the test server.
pub const URL_VAR: &str = "BERTH_TEST_POSTGRES_URL";

/// The test server's URL, or `None` after printing SKIPPED (a panic when CI requires
/// the server).
///
/// # Panics
/// When `BERTH_REQUIRE_POSTGRES=1` and no server is configured.
#[allow(clippy::print_stderr)]
pub fn server(test: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("BERTH_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "{test}: BERTH_REQUIRE_POSTGRES=1 but {URL_VAR} is not set"
            );
            eprintln!(
                "SKIPPED {test}: no PostgreSQL server ({URL_VAR} is not set; `.ci/postgres start DIR` starts one)"
            );
            None
        }
    }
}

/// `url` with its database replaced by `db`.
///
/// # Panics
/// When `url` has no path.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{db}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Creates a fresh, empty database on the test server and returns its URL (`None`:
/// SKIPPED). Databases are left to the throwaway cluster.
///
/// # Panics
/// When the server cannot be reached or refuses.
#[allow(clippy::expect_used)]
pub async fn scratch_database(test: &str) -> Option<String> {
    let url = server(test)?;
    let name = format!("berth_{:016x}", rand_u64());
    let mut conn = PgConnection::connect(&url)
        .await
        .expect("connect to the test PostgreSQL server");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create a scratch database");
    let _ = conn.close().await;
    Some(with_database(&url, &name))
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}
