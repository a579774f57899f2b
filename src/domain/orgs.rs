//! Organizations: creation by the platform team.

use chrono::{Duration, Utc};
use entity::enums::{ChangeType, OrganizationStatus};
use entity::{organization, subscription_history};
use uuid::Uuid;

use super::{Slug, Viewer, access, required_text};
use crate::error::{AppError, AppResult, is_unique_violation};
use crate::store;

pub struct CreateOrganization {
    pub name: String,
    pub slug: String,
    pub plan_code: Option<String>,
    pub start_trial: bool,
}

/// createOrganization: platform team only. With `start_trial`, the organization starts TRIALING for
/// its plan's trial days and the trial is recorded in its subscription history.
pub async fn create(
    engine: &super::usage::Engine,
    viewer: &Viewer,
    input: CreateOrganization,
) -> AppResult<organization::Model> {
    access::require_platform(viewer)?;
    let name = required_text("name", &input.name, 200)?;
    let slug = Slug::parse(&input.slug)?.into_inner();
    let plan = match input.plan_code.as_deref() {
        Some(code) => Some(
            store::catalog::plan_by_code(&engine.db, code)
                .await?
                .filter(|p| p.active)
                .ok_or_else(|| {
                    AppError::bad_input(format!(
                        "unknown or inactive plan {}",
                        crate::error::quote(code)
                    ))
                })?,
        ),
        None => None,
    };
    if input.start_trial && plan.is_none() {
        return Err(AppError::bad_input("startTrial needs a planCode"));
    }
    let (status, trial_ends_at) = match (&plan, input.start_trial) {
        (Some(p), true) => (
            OrganizationStatus::Trialing,
            Some(Utc::now() + Duration::days(p.trial_days.into())),
        ),
        _ => (OrganizationStatus::Active, None),
    };
    let scope = viewer.scope();
    // Read before the transaction: loading the catalogue takes a connection of its own, which a
    // burst of creations each holding one could otherwise wait for until the pool times out.
    engine.catalog().await?;
    let txn = engine.db.begin_write().await?;
    let created = store::orgs::insert(
        &txn,
        scope,
        store::orgs::NewOrganization {
            name,
            slug,
            status,
            plan_id: plan.as_ref().map(|p| p.id),
            trial_ends_at,
        },
    )
    .await;
    let org = match created {
        Ok(Some(org)) => org,
        Ok(None) => return Err(AppError::forbidden("this needs a platform-team member")),
        Err(e) if is_unique_violation(&e) => {
            return Err(AppError::conflict("an organization with this slug exists"));
        }
        Err(e) => return Err(e.into()),
    };
    // The first plan is a change of money and limits like any other: it is in the history too.
    let first = match (&plan, input.start_trial) {
        (_, true) => Some((
            ChangeType::TrialStarted,
            "organization created with a trial",
        )),
        (Some(_), false) => Some((ChangeType::Upgrade, "organization created on this plan")),
        (None, false) => None,
    };
    if let Some((change_type, reason)) = first {
        store::ledger::insert_history(
            &txn,
            scope,
            subscription_history::Model {
                organization_id: org.id,
                id: Uuid::now_v7(),
                old_plan_id: None,
                new_plan_id: org.plan_id,
                change_type,
                stripe_event_id: None,
                stripe_subscription_id: None,
                amount_paid: None,
                effective_date: Utc::now().date_naive(),
                reason: Some(reason.into()),
                created_at: Utc::now(),
                created_by: Some(viewer.sub.clone()),
            },
        )
        .await?;
    }
    // Its row in the current period's utilization index, so a complete index stays complete.
    engine
        .index_new_org(
            &txn,
            scope,
            crate::domain::OrganizationId(org.id),
            org.plan_id,
        )
        .await?;
    txn.commit().await?;
    // Whatever this replica kept about every organization (the platform's pages in the response
    // cache) is void. Other replicas keep theirs for the cache's time to live at most: no
    // notification, since one would reach usageUpdated's subscribers as a usage change.
    engine
        .cache
        .invalidate(crate::domain::OrganizationId(org.id));
    Ok(org)
}
