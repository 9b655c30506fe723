//! Named crash points, for tests that must kill a process at an exact step.
//!
//! Killing a process "at some moment" under load rarely lands between the
//! two steps that matter (say, after the commit decision is durable and
//! before phase two starts). A failpoint is a named place in the code; when
//! it is switched on, the process aborts there, as `kill -9` would: no
//! destructor runs, nothing is flushed, no reply goes out.
//!
//! Failpoints come from the `fail` crate and are switched on by the
//! `FAILPOINTS` environment variable at start, in its syntax, where the
//! `return` action means "crash here":
//!
//! ```text
//! FAILPOINTS='coordinator::after-decision=return'         # first time through
//! FAILPOINTS='worker::after-prepare=20*off->return'      # the 21st time
//! ```
//!
//! Each service lists its failpoints as constants beside the code that
//! crosses them, so `grep 'crash_point('` finds every one.

/// Reads `FAILPOINTS`; keep the returned guard alive for the process's life.
pub fn init() -> fail::FailScenario<'static> {
    let scenario = fail::FailScenario::setup();
    let configured = fail::list();
    if !configured.is_empty() {
        tracing::warn!(
            ?configured,
            "Failpoints are armed: this process will crash on purpose."
        );
    }
    scenario
}

/// Aborts the process here if the failpoint `name` is switched on.
pub fn crash_point(name: &str) {
    if fail::eval(name, |_| ()).is_some() {
        tracing::error!(failpoint = name, "Crashing at a failpoint, as configured.");
        std::process::abort();
    }
}
