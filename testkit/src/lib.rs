//! Host-only helpers for gitlab-backup: the toolchain bootstrap ([`tools`]), the GitLab
//! stand-in ([`standin`]), the local stack of s3s-fs and `wrangler dev` ([`stack`]): what the
//! end-to-end tests and the commands behind `cargo xtask` stand on. Never part of the worker.

pub mod stack;
pub mod standin;
pub mod tools;
