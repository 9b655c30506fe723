//! Faultline's system tests: the real binaries as processes on a private
//! NATS, driven over HTTP. The tests live in `tests/it/`; this library is
//! empty.
#![forbid(unsafe_code)]
