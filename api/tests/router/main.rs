//! The router's tests: every endpoint of CONTRACT's HTTP API and every row of its error table,
//! driven through `miqat_api::app` with `tower::ServiceExt::oneshot` (no sockets), over a small
//! catalog written in the fixture language, whose national IDs carry valid check digits. One module per resource, one test
//! binary.
#![allow(clippy::unwrap_used)]

/// The fixture language the engine's tests write catalogs in, shared rather than copied.
#[path = "../../../engine/tests/common/fixture.rs"]
mod fixture;
mod support;

mod admin;
mod caravans;
mod contract;
mod cors;
mod deployment;
mod errors;
mod events;
mod limits;
mod operations;
mod queue;
mod reservations;
mod roles;
mod transfers;
mod waitlist;
mod waves;
