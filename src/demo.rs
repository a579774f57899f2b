//! `serve --demo`: two organizations with some usage, so the playground shows something at once.
//! Idempotent: the recordings carry idempotency keys, and existing organizations are reused.

use rust_decimal::Decimal;
use std::str::FromStr;

use crate::domain::usage::{Engine, RecordInput};
use crate::domain::{OrganizationId, Scope, Viewer, orgs};
use crate::error::AppError;
use crate::store;

pub async fn seed(engine: &Engine) -> anyhow::Result<Vec<(String, OrganizationId)>> {
    let viewer = Viewer {
        sub: "tollgate-demo".into(),
        org_id: None,
        role: None,
        platform: true,
    };
    let plans = [
        (
            "Acme Venues",
            "acme-venues",
            "basic",
            [
                ("venues", "1"),
                ("staff", "2"),
                ("bookings", "46"),
                ("revenue", "4500.00"),
            ],
        ),
        (
            "Globex Games",
            "globex-games",
            "growth",
            [
                ("venues", "3"),
                ("staff", "12"),
                ("bookings", "870"),
                ("revenue", "23150.50"),
            ],
        ),
    ];
    let mut out = Vec::new();
    for (name, slug, plan, usage) in plans {
        let filter = store::orgs::OrgFilter {
            status: None,
            search: Some(slug.into()),
        };
        let existing = store::orgs::page(&engine.db, Scope::Platform, &filter, None, 10)
            .await?
            .into_iter()
            .find(|o| o.slug == slug);
        let org = match existing {
            Some(o) => o,
            None => orgs::create(
                engine,
                &viewer,
                orgs::CreateOrganization {
                    name: name.into(),
                    slug: slug.into(),
                    plan_code: Some(plan.into()),
                    start_trial: false,
                },
            )
            .await
            .map_err(describe)?,
        };
        let period = crate::domain::Period::current().start;
        for (metric, qty) in usage {
            engine
                .record(
                    &viewer,
                    RecordInput {
                        organization_id: Some(org.id.to_string()),
                        metric: metric.into(),
                        quantity: Decimal::from_str(qty)?,
                        idempotency_key: Some(format!("demo:{period}:{metric}")),
                        reference: None,
                        occurred_at: None,
                    },
                )
                .await
                .map_err(describe)?;
        }
        out.push((name.to_owned(), OrganizationId(org.id)));
    }
    Ok(out)
}

fn describe(e: AppError) -> anyhow::Error {
    match e {
        AppError::Internal(inner) => inner,
        other => anyhow::anyhow!("{}: {}", other.code(), other.client_message()),
    }
}
