//! The engine against a simulated GitLab and S3, on the host: unit tests and property tests.
