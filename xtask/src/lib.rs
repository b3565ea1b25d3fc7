//! Host-only helpers for gitlab-backup: the toolchain bootstrap ([`tools`]), the GitLab
//! stand-in ([`standin`]), the local stack of s3s-fs and `wrangler dev` ([`stack`]), and the
//! commands behind `cargo xtask` (the README's two commands among them). Never part of the worker.

pub mod stack;
pub mod standin;
pub mod tools;
