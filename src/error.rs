//! The one error type of the service. `AppError::code()` becomes `extensions.code` in exactly one place
//! (`From<AppError> for async_graphql::Error`). Internal errors are logged with their whole cause and
//! shown to clients as a generic message.
//!
//! `AppError` deliberately does not implement `Display`: async-graphql converts every `Display` error
//! into a client-visible message, and a bare `?` would then leak driver text. Without `Display`, the only
//! conversion is ours.

use sea_orm::DbErr;

#[derive(Debug)]
pub enum AppError {
    Unauthenticated(String),
    Forbidden(String),
    NotFound(String),
    BadInput(String),
    Conflict(String),
    RateLimited(String),
    Internal(anyhow::Error),
}

pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    pub fn code(&self) -> &'static str {
        match self {
            AppError::Unauthenticated(_) => "UNAUTHENTICATED",
            AppError::Forbidden(_) => "FORBIDDEN",
            AppError::NotFound(_) => "NOT_FOUND",
            AppError::BadInput(_) => "BAD_USER_INPUT",
            AppError::Conflict(_) => "CONFLICT",
            AppError::RateLimited(_) => "RATE_LIMITED",
            AppError::Internal(_) => "INTERNAL",
        }
    }

    /// The text a client may see.
    pub fn client_message(&self) -> String {
        match self {
            AppError::Unauthenticated(m)
            | AppError::Forbidden(m)
            | AppError::NotFound(m)
            | AppError::BadInput(m)
            | AppError::Conflict(m)
            | AppError::RateLimited(m) => m.clone(),
            AppError::Internal(_) => "internal error".to_owned(),
        }
    }

    pub fn bad_input(msg: impl Into<String>) -> Self {
        AppError::BadInput(msg.into())
    }

    pub fn not_found(what: &str) -> Self {
        AppError::NotFound(format!("{what} not found"))
    }

    pub fn forbidden(msg: impl Into<String>) -> Self {
        AppError::Forbidden(msg.into())
    }

    pub fn conflict(msg: impl Into<String>) -> Self {
        AppError::Conflict(msg.into())
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        AppError::Internal(err.into())
    }
}

impl From<DbErr> for AppError {
    fn from(err: DbErr) -> Self {
        if matches!(&err, DbErr::Custom(m) if m == crate::store::ledger::COUNTER_OVERFLOW) {
            let largest = rust_decimal::Decimal::new(i64::MAX, crate::domain::types::SCALE);
            return AppError::bad_input(format!(
                "this would take the counter past the largest value it can hold ({largest})"
            ));
        }
        AppError::Internal(anyhow::Error::new(err).context("database error"))
    }
}

impl From<AppError> for async_graphql::Error {
    fn from(err: AppError) -> Self {
        if let AppError::Internal(cause) = &err {
            tracing::error!(error = ?cause, "internal error");
        }
        let code = err.code();
        async_graphql::Error::new(err.client_message()).extend_with(|_, ext| ext.set("code", code))
    }
}

/// True when a database error is a unique-key violation (both engines).
pub fn is_unique_violation(err: &DbErr) -> bool {
    matches!(
        err.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

use async_graphql::ErrorExtensions as _;

/// Most characters of a client's input that an error message quotes.
pub const QUOTE_MAX: usize = 64;

/// A client's input as an error message quotes it: in double quotes, escaped, and cut after
/// `QUOTE_MAX` characters, so a huge input never comes back whole.
pub fn quote(input: &str) -> String {
    let mut chars = input.chars();
    let head: String = chars.by_ref().take(QUOTE_MAX).collect();
    if chars.next().is_some() {
        format!("{head:?}…")
    } else {
        format!("{head:?}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn quotes_are_capped() {
        assert_eq!(super::quote("pro"), "\"pro\"");
        let long = "x".repeat(500_000);
        let q = super::quote(&long);
        assert!(q.len() < 80, "{}", q.len());
        assert!(q.ends_with('…'));
    }
}
