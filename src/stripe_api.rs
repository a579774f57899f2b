//! Calls Tollgate makes to Stripe's HTTP API (form-encoded, as Stripe speaks it), answered as JSON
//! and read leniently, like the webhooks. The base URL is a setting, so tests point it at a fake.
//! The secret key never appears in a log line or an error.

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::config::Settings;
use crate::error::AppError;

/// The client, or why there is none.
#[derive(Clone)]
pub struct StripeApi {
    http: reqwest::Client,
    base: String,
    key: Option<SecretString>,
}

/// Stripe's API version Tollgate reads its answers in.
pub const API_VERSION: &str = "2024-06-20";

impl StripeApi {
    pub fn from_settings(s: &Settings) -> Self {
        StripeApi {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(20))
                .build()
                .unwrap_or_default(),
            base: s.stripe_api_base.trim_end_matches('/').to_owned(),
            key: s.stripe_secret_key.clone(),
        }
    }

    fn key(&self) -> Result<&SecretString, AppError> {
        self.key.as_ref().ok_or_else(|| {
            AppError::bad_input(
                "Stripe is not configured on this server: set TOLLGATE_STRIPE_SECRET_KEY",
            )
        })
    }

    /// POST `path` with a form; `idempotency_key` makes Stripe answer a repeat with its first answer;
    /// `account` acts on a connected account (`Stripe-Account`).
    pub async fn post(
        &self,
        path: &str,
        form: &[(&str, String)],
        idempotency_key: Option<&str>,
        account: Option<&str>,
    ) -> Result<Value, AppError> {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(self.key()?.expose_secret())
            .header("Stripe-Version", API_VERSION)
            .form(form);
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(a) = account {
            req = req.header("Stripe-Account", a);
        }
        answer(req.send().await).await
    }

    /// GET `path`, on a connected account when `account` is given.
    pub async fn get(&self, path: &str, account: Option<&str>) -> Result<Value, AppError> {
        let mut req = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(self.key()?.expose_secret())
            .header("Stripe-Version", API_VERSION);
        if let Some(a) = account {
            req = req.header("Stripe-Account", a);
        }
        answer(req.send().await).await
    }
}

/// Stripe's answer: its JSON, Stripe's own message for a refusal (4xx), INTERNAL when Stripe could
/// not be reached or failed (5xx).
async fn answer(sent: Result<reqwest::Response, reqwest::Error>) -> Result<Value, AppError> {
    let resp = sent.map_err(|e| {
        AppError::internal(anyhow::anyhow!("stripe unreachable: {}", e.without_url()))
    })?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(body);
    }
    let message = body
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("no message");
    // 409 (the same Idempotency-Key in flight elsewhere) and 429 (Stripe's rate limit) pass; a
    // later try gets Stripe's answer.
    if status.is_client_error()
        && status != reqwest::StatusCode::CONFLICT
        && status != reqwest::StatusCode::TOO_MANY_REQUESTS
    {
        Err(AppError::bad_input(format!(
            "Stripe refused the request: {}",
            crate::error::quote(message)
        )))
    } else {
        Err(AppError::internal(anyhow::anyhow!(
            "stripe answered {status}: {message}"
        )))
    }
}
