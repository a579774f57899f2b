//! Integration tests: the real server on a random port, over HTTP, on SQLite and on Postgres.

mod helpers;

mod auth;
mod clients;
mod contract;
mod dashboard;
mod decimals;
mod engine;
mod fuzz;
mod hardening;
mod http;
mod jwks;
mod localstripe;
mod memberships;
mod money;
mod platform;
mod production;
mod replicas;
mod settings;
mod speed;
mod stripe;
mod tenancy;
mod usage;
mod ws;
