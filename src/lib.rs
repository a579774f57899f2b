//! Tollgate: a multi-tenant usage and subscription gateway. See ARCHITECTURE.md for the map.

// No panics on request paths: a fallible step answers an error. Tests may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod alerts;
pub mod app;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod domain;
pub mod error;
pub mod graphql;
pub mod http;
pub mod ratelimit;
pub mod store;
pub mod stripe_api;
pub mod telemetry;
pub mod ws;
