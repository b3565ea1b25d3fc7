//! gitlab-backup: backs up every project of chosen GitLab groups into S3-compatible storage,
//! from a Cloudflare Worker. GitLab uploads each export straight to a presigned S3 URL; a
//! Durable Object keeps the run's cursor and paces exports under GitLab's rate limit.
//!
//! Everything but [`worker`] is a sans-IO core that builds and tests on the host: it is handed
//! the clock and the answers to its requests and returns what to do next. [`worker`] is the thin
//! glue to the Workers runtime and only exists on `wasm32`. See ARCHITECTURE.md.

pub mod api;
pub mod auth;
pub mod config;
pub mod engine;
pub mod gitlab;
pub mod http;
pub mod manifest;
pub mod restore;
pub mod s3;
pub mod secret;
pub mod status;
pub mod store;
pub mod time;

#[cfg(target_arch = "wasm32")]
mod worker;
