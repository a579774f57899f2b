//! Stripe Connect (the seed's create-account, account-link and account-status edge functions): an
//! organization's Express account, created once (an idempotency key derived from the organization,
//! so two concurrent calls make one account), its onboarding links, and its state as Tollgate last
//! heard of it (an API answer or an account.updated webhook).

use chrono::{DateTime, Utc};
use entity::connect_account;
use serde_json::Value;

use super::access::{self, Action};
use super::usage::Engine;
use super::{OrganizationId, Scope, Viewer};
use crate::error::{AppError, AppResult};
use crate::store;

/// The contract's ConnectAccountStatus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// No connected account yet.
    None,
    /// Created; onboarding not finished (details not submitted or requirements due).
    Onboarding,
    /// Charges and payouts enabled.
    Active,
    /// Stripe disabled charges or payouts.
    Restricted,
}

pub fn status(account: Option<&connect_account::Model>) -> Status {
    match account {
        None => Status::None,
        Some(a) if a.disabled => Status::Restricted,
        Some(a) if a.charges_enabled && a.payouts_enabled => Status::Active,
        Some(_) => Status::Onboarding,
    }
}

/// What an account is due, from its stored JSON.
pub fn requirements_due(account: &connect_account::Model) -> Vec<String> {
    serde_json::from_str(&account.requirements_due).unwrap_or_default()
}

/// An account row from Stripe's account object.
pub fn from_stripe(org: OrganizationId, account: &Value) -> Option<connect_account::Model> {
    let flag = |k: &str| account.get(k).and_then(Value::as_bool).unwrap_or(false);
    let due: Vec<String> = account
        .pointer("/requirements/currently_due")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Some(connect_account::Model {
        organization_id: org.0,
        stripe_account_id: account.get("id")?.as_str()?.to_owned(),
        charges_enabled: flag("charges_enabled"),
        payouts_enabled: flag("payouts_enabled"),
        details_submitted: flag("details_submitted"),
        disabled: account
            .pointer("/requirements/disabled_reason")
            .is_some_and(|r| !r.is_null()),
        requirements_due: serde_json::to_string(&due).unwrap_or_else(|_| "[]".into()),
        updated_at: Utc::now(),
    })
}

/// The organization's account, as stored (Organization.connectAccount).
pub async fn account(
    engine: &Engine,
    scope: Scope,
    org: OrganizationId,
) -> AppResult<Option<connect_account::Model>> {
    Ok(store::connect::by_org(&engine.db, scope, org).await?)
}

/// Who may create an account or a link, or read the account from Stripe now: OWNER, ADMIN or the
/// platform team.
async fn manager(
    engine: &Engine,
    viewer: &Viewer,
    org: Option<&str>,
) -> AppResult<entity::organization::Model> {
    let id = access::target_org(viewer, org)?;
    let org = access::authorize(&engine.db, viewer, id, Action::Read).await?;
    if !(viewer.platform || matches!(viewer.role, Some(super::Role::Owner | super::Role::Admin))) {
        return Err(AppError::forbidden(
            "the connected account needs the OWNER or ADMIN role",
        ));
    }
    Ok(org)
}

async fn store_account(engine: &Engine, row: connect_account::Model) -> AppResult<()> {
    let txn = engine.db.begin_write().await?;
    // Writers of one organization's account take turns (the organization's period lock): two
    // concurrent first writes would otherwise race on the account id's unique key (Postgres checks
    // only the ON CONFLICT target's).
    let org = OrganizationId(row.organization_id);
    store::ledger::lock_period(&*txn, Scope::Platform, org, super::Period::current()).await?;
    store::connect::upsert(&*txn, Scope::Platform, &row).await?;
    txn.commit().await?;
    Ok(())
}

/// createConnectAccount: the existing account, or a new Express account made once.
pub async fn create(
    engine: &Engine,
    viewer: &Viewer,
    org: Option<&str>,
    email: Option<&str>,
    country: Option<&str>,
) -> AppResult<connect_account::Model> {
    let org = manager(engine, viewer, org).await?;
    let oid = OrganizationId(org.id);
    if let Some(existing) = account(engine, viewer.scope(), oid).await? {
        return Ok(existing);
    }
    let mut form = vec![
        ("type", "express".to_owned()),
        ("metadata[organization_id]", org.id.to_string()),
    ];
    if let Some(e) = super::optional_text("email", email, 320)? {
        form.push(("email", e));
    }
    if let Some(c) = country {
        let c = c.trim().to_ascii_uppercase();
        if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(AppError::bad_input(
                "country must be a two-letter ISO code such as US",
            ));
        }
        form.push(("country", c));
    }
    // The key makes Stripe answer a second call (a concurrent one, or a retry after a crash
    // between its answer and the commit) with the same account.
    let key = format!("tollgate-connect-account-{}", org.id);
    // No database connection is held while Stripe answers.
    engine.db.release().await;
    let created = engine
        .stripe
        .post("/v1/accounts", &form, Some(&key), None)
        .await?;
    let row = from_stripe(oid, &created)
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("stripe answered no account id")))?;
    store_account(engine, row).await?;
    account(engine, viewer.scope(), oid)
        .await?
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("the account vanished")))
}

/// An onboarding link of the organization's account.
pub struct Link {
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

fn web_url(field: &str, url: &str) -> AppResult<String> {
    let u = url.trim();
    if (u.starts_with("https://") || u.starts_with("http://")) && u.len() <= 2048 {
        Ok(u.to_owned())
    } else {
        Err(AppError::bad_input(format!(
            "{field} must be an http(s) URL"
        )))
    }
}

/// createConnectAccountLink: a fresh onboarding link (the account must exist).
pub async fn link(
    engine: &Engine,
    viewer: &Viewer,
    org: Option<&str>,
    refresh_url: &str,
    return_url: &str,
) -> AppResult<Link> {
    let org = manager(engine, viewer, org).await?;
    let refresh_url = web_url("refreshUrl", refresh_url)?;
    let return_url = web_url("returnUrl", return_url)?;
    let Some(acct) = account(engine, viewer.scope(), OrganizationId(org.id)).await? else {
        return Err(AppError::conflict(
            "the organization has no connected account yet: createConnectAccount first",
        ));
    };
    let form = vec![
        ("account", acct.stripe_account_id.clone()),
        ("refresh_url", refresh_url),
        ("return_url", return_url),
        ("type", "account_onboarding".to_owned()),
    ];
    engine.db.release().await;
    let answer = engine
        .stripe
        .post("/v1/account_links", &form, None, None)
        .await?;
    let url = answer
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("stripe answered no link url")))?;
    let expires_at = answer
        .get("expires_at")
        .and_then(Value::as_i64)
        .and_then(|t| DateTime::<Utc>::from_timestamp(t, 0))
        .unwrap_or_else(|| Utc::now() + chrono::Duration::minutes(5));
    Ok(Link {
        url: url.to_owned(),
        expires_at,
    })
}

/// refreshConnectAccount: the account's state read from Stripe now (the seed's account-status).
pub async fn refresh(
    engine: &Engine,
    viewer: &Viewer,
    org: Option<&str>,
) -> AppResult<Option<connect_account::Model>> {
    let org = manager(engine, viewer, org).await?;
    let oid = OrganizationId(org.id);
    let Some(acct) = account(engine, viewer.scope(), oid).await? else {
        return Ok(None);
    };
    engine.db.release().await;
    let fresh = engine
        .stripe
        .get(&format!("/v1/accounts/{}", acct.stripe_account_id), None)
        .await?;
    if let Some(row) = from_stripe(oid, &fresh) {
        store_account(engine, row).await?;
    }
    account(engine, viewer.scope(), oid).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn statuses_follow_the_contract() {
        let org = OrganizationId(uuid::Uuid::nil());
        let row = |v: Value| from_stripe(org, &v).unwrap();
        assert_eq!(status(None), Status::None);
        let new = row(
            json!({ "id": "acct_1", "requirements": { "currently_due": ["external_account"], "disabled_reason": null } }),
        );
        assert_eq!(status(Some(&new)), Status::Onboarding);
        assert_eq!(requirements_due(&new), vec!["external_account".to_owned()]);
        let active = row(
            json!({ "id": "acct_1", "charges_enabled": true, "payouts_enabled": true, "details_submitted": true }),
        );
        assert_eq!(status(Some(&active)), Status::Active);
        let restricted = row(
            json!({ "id": "acct_1", "charges_enabled": true, "payouts_enabled": true,
            "requirements": { "disabled_reason": "requirements.past_due" } }),
        );
        assert_eq!(status(Some(&restricted)), Status::Restricted);
        assert!(from_stripe(org, &json!({})).is_none());
    }
}
