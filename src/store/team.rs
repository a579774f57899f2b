//! The platform team (the seed's platform_team table), keyed by the token's `sub`.

use chrono::Utc;
use entity::platform_team;
use sea_orm::{
    ActiveValue::Set, ConnectionTrait, DbErr, EntityTrait, QueryOrder, sea_query::OnConflict,
};

pub async fn is_member<C: ConnectionTrait>(db: &C, sub: &str) -> Result<bool, DbErr> {
    Ok(platform_team::Entity::find_by_id(sub.to_owned())
        .one(db)
        .await?
        .is_some())
}

/// Adds a member; adding one twice is not an error.
pub async fn add<C: ConnectionTrait>(
    db: &C,
    sub: &str,
    added_by: Option<&str>,
) -> Result<(), DbErr> {
    let row = platform_team::ActiveModel {
        sub: Set(sub.to_owned()),
        added_by: Set(added_by.map(str::to_owned)),
        created_at: Set(Utc::now()),
    };
    platform_team::Entity::insert(row)
        .on_conflict(
            OnConflict::column(platform_team::Column::Sub)
                .do_nothing()
                .to_owned(),
        )
        .try_insert()
        .exec(db)
        .await?;
    announce(db).await
}

/// Tells every replica (and the CLI's changes tell every server) that the team changed: they read
/// it again at once (Postgres; a SQLite server reads it again within `TEAM_REFRESH`).
async fn announce<C: ConnectionTrait>(db: &C) -> Result<(), DbErr> {
    if db.get_database_backend() == sea_orm::DbBackend::Postgres {
        super::notify(
            db,
            crate::alerts::CHANNEL,
            &crate::alerts::encode_team_changed(),
        )
        .await?;
    }
    Ok(())
}

/// Removes a member; answers whether there was one.
pub async fn remove<C: ConnectionTrait>(db: &C, sub: &str) -> Result<bool, DbErr> {
    let removed = platform_team::Entity::delete_by_id(sub.to_owned())
        .exec(db)
        .await?
        .rows_affected
        > 0;
    announce(db).await?;
    Ok(removed)
}

pub async fn list<C: ConnectionTrait>(db: &C) -> Result<Vec<platform_team::Model>, DbErr> {
    platform_team::Entity::find()
        .order_by_asc(platform_team::Column::Sub)
        .all(db)
        .await
}
