//! `serve --demo`: two organizations with some usage, so the playground shows something at once.
//! Idempotent: the recordings carry idempotency keys, and existing organizations are reused.

use rust_decimal::Decimal;
use std::str::FromStr;

use crate::domain::usage::{Engine, RecordInput};
use crate::domain::{OrganizationId, Scope, Viewer, orgs};
use crate::error::AppError;
use crate::store;

/// The platform-team member `serve --demo` adds, so that it can print a link to the platform view.
pub const PLATFORM_SUB: &str = "tollgate-demo";

/// A demo organization: name, slug, plan, and its recordings (metric, quantity).
type DemoOrg = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

pub async fn seed(engine: &Engine) -> anyhow::Result<Vec<(String, OrganizationId)>> {
    let viewer = Viewer {
        sub: PLATFORM_SUB.into(),
        org_id: None,
        role: None,
        platform: true,
    };
    let plans: [DemoOrg; 2] = [
        (
            "Acme Venues",
            "acme-venues",
            "basic",
            &[
                ("venues", "1"),
                ("staff", "2"),
                ("bookings", "46"),
                ("revenue", "4500.00"),
                ("bookings", "38"),
            ],
        ),
        (
            "Globex Games",
            "globex-games",
            "growth",
            &[
                ("venues", "3"),
                ("staff", "12"),
                ("bookings", "870"),
                ("revenue", "23150.50"),
            ],
        ),
    ];
    store::team::add(&engine.db, PLATFORM_SUB, Some("serve --demo")).await?;
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
        // A metric's second recording has a key of its own (older demo databases hold the first).
        let mut seen = std::collections::HashSet::new();
        for &(metric, qty) in usage {
            let key = if seen.insert(metric) {
                format!("demo:{period}:{metric}")
            } else {
                format!("demo:{period}:{metric}:2")
            };
            engine
                .record(
                    &viewer,
                    RecordInput {
                        organization_id: Some(org.id.to_string()),
                        metric: metric.into(),
                        quantity: Decimal::from_str(qty)?,
                        idempotency_key: Some(key),
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
