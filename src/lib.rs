//! Tollgate: a multi-tenant usage and subscription gateway. See ARCHITECTURE.md for the map.

pub mod alerts;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod demo;
pub mod domain;
pub mod error;
pub mod graphql;
pub mod http;
pub mod store;
pub mod telemetry;
pub mod ws;
