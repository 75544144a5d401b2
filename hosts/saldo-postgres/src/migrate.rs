//! Applying the schema migrations.

use sqlx::PgPool;
use sqlx::migrate::Migrator;

use crate::StoreError;

/// The migrations under `migrations/`, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// A migration applied by one call of [`migrate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    /// Its version (the file name's number).
    pub version: i64,
    /// Its description (the rest of the file name).
    pub description: String,
}

/// Applies every migration not yet applied, in order, and returns the ones
/// it applied (none when the database is up to date). Safe to run again and
/// from several processes at once: sqlx takes an advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<Vec<AppliedMigration>, StoreError> {
    let before = applied_versions(pool).await?;
    MIGRATOR
        .run(pool)
        .await
        .map_err(|error| StoreError::Migration(error.to_string()))?;
    let after = applied_versions(pool).await?;
    Ok(MIGRATOR
        .iter()
        .filter(|migration| {
            after.contains(&migration.version) && !before.contains(&migration.version)
        })
        .map(|migration| AppliedMigration {
            version: migration.version,
            description: migration.description.to_string(),
        })
        .collect())
}

async fn applied_versions(pool: &PgPool) -> Result<Vec<i64>, StoreError> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    if !exists {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_scalar(
        "SELECT version FROM public._sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(pool)
    .await?)
}
