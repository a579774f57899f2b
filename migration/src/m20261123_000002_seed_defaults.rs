//! Default data: the seed's metrics and three plans like the seed's. Every insert is
//! `ON CONFLICT DO NOTHING`, so applying it again (or after the platform team edited a plan) changes
//! nothing.

use sea_orm::Value;
use sea_orm_migration::prelude::*;

use crate::DECIMAL_SCALE;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// (code, name, kind, unit)
const METRICS: [(&str, &str, &str, &str); 4] = [
    ("venues", "Venues", "GAUGE", "venues"),
    ("staff", "Staff members", "GAUGE", "people"),
    ("bookings", "Bookings", "COUNTER", "bookings"),
    ("revenue", "Revenue generated", "COUNTER", "USD"),
];

struct SeedPlan {
    id: &'static str,
    code: &'static str,
    name: &'static str,
    rank: i32,
    price: i64,
    fee_pct: i64,
    /// (metric, included, enforcement, overage unit price), amounts in whole units or hundredths
    limits: &'static [(&'static str, Option<i64>, &'static str, Option<i64>)],
}

const fn units(n: i64) -> i64 {
    n * 10_i64.pow(DECIMAL_SCALE)
}

const fn hundredths(n: i64) -> i64 {
    n * 10_i64.pow(DECIMAL_SCALE - 2)
}

const PLANS: [SeedPlan; 3] = [
    SeedPlan {
        id: "5b1f6a70-0001-4000-8000-000000000001",
        code: "basic",
        name: "Basic",
        rank: 1,
        price: hundredths(4900),
        fee_pct: hundredths(500),
        limits: &[
            ("venues", Some(units(1)), "HARD", None),
            ("staff", Some(units(3)), "HARD", None),
            ("bookings", Some(units(100)), "SOFT", None),
            ("revenue", None, "SOFT", None),
        ],
    },
    SeedPlan {
        id: "5b1f6a70-0002-4000-8000-000000000002",
        code: "growth",
        name: "Growth",
        rank: 2,
        price: hundredths(29900),
        fee_pct: hundredths(300),
        limits: &[
            ("venues", Some(units(5)), "HARD", None),
            ("staff", Some(units(25)), "SOFT", None),
            (
                "bookings",
                Some(units(1000)),
                "OVERAGE",
                Some(hundredths(50)),
            ),
            ("revenue", None, "SOFT", None),
        ],
    },
    SeedPlan {
        id: "5b1f6a70-0003-4000-8000-000000000003",
        code: "enterprise",
        name: "Enterprise",
        rank: 3,
        price: hundredths(99900),
        fee_pct: hundredths(150),
        limits: &[
            ("venues", None, "SOFT", None),
            ("staff", None, "SOFT", None),
            ("bookings", None, "SOFT", None),
            ("revenue", None, "SOFT", None),
        ],
    },
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let now = chrono::Utc::now();
        for (code, name, kind, unit) in METRICS {
            manager
                .exec_stmt(
                    Query::insert()
                        .into_table("metrics")
                        .columns(["code", "name", "kind", "unit", "created_at"])
                        .values_panic([
                            code.into(),
                            name.into(),
                            kind.into(),
                            unit.into(),
                            now.into(),
                        ])
                        .on_conflict(OnConflict::column("code").do_nothing().to_owned())
                        .to_owned(),
                )
                .await?;
        }
        for plan in PLANS {
            let id = uuid::Uuid::parse_str(plan.id).map_err(|e| DbErr::Migration(e.to_string()))?;
            manager
                .exec_stmt(
                    Query::insert()
                        .into_table("plans")
                        .columns([
                            "id",
                            "code",
                            "name",
                            "rank",
                            "price_monthly",
                            "currency",
                            "trial_days",
                            "application_fee_pct",
                            "active",
                            "created_at",
                            "updated_at",
                        ])
                        .values_panic([
                            id.into(),
                            plan.code.into(),
                            plan.name.into(),
                            plan.rank.into(),
                            plan.price.into(),
                            "USD".into(),
                            14.into(),
                            plan.fee_pct.into(),
                            true.into(),
                            now.into(),
                            now.into(),
                        ])
                        .on_conflict(OnConflict::column("code").do_nothing().to_owned())
                        .to_owned(),
                )
                .await?;
            for (metric, included, enforcement, overage) in plan.limits {
                manager
                    .exec_stmt(
                        Query::insert()
                            .into_table("plan_limits")
                            .columns([
                                "plan_id",
                                "metric_code",
                                "included",
                                "enforcement",
                                "overage_unit_price",
                            ])
                            .values_panic([
                                id.into(),
                                (*metric).into(),
                                Value::BigInt(*included).into(),
                                (*enforcement).into(),
                                Value::BigInt(*overage).into(),
                            ])
                            .on_conflict(
                                OnConflict::columns(["plan_id", "metric_code"])
                                    .do_nothing()
                                    .to_owned(),
                            )
                            .to_owned(),
                    )
                    .await?;
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let ids: Vec<Value> = PLANS
            .iter()
            .filter_map(|p| uuid::Uuid::parse_str(p.id).ok())
            .map(Value::from)
            .collect();
        manager
            .exec_stmt(
                Query::delete()
                    .from_table("plan_limits")
                    .and_where(Expr::col("plan_id").is_in(ids.clone()))
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::delete()
                    .from_table("plans")
                    .and_where(Expr::col("id").is_in(ids))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
