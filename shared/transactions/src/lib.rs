//! Two-phase commit as pure logic: no I/O, no clocks, no randomness.
//!
//! The coordinator and the workers do the talking and the writing; what
//! they decide at each step comes from here, so the rules can be read in
//! one place and tested on their own (unit tests beside each module,
//! property tests of whole message histories in `tests/`).
//!
//! - [`sharding`]: which shard an account lives on, and which live worker
//!   owns a shard (rendezvous hashing over the members the health-monitor
//!   reports up).
//! - [`participant`]: a branch's state machine on a shard owner, with the
//!   barrier rules that make duplicate and reordered messages harmless.
//! - [`shard_batch`]: a shard owner's group-committed batch, planned in
//!   memory from the rows it touches, so it is written with a handful of
//!   set-based statements.
//! - [`log_backing`]: the check that a coordinator's message is backed
//!   by the decision log (the fence, the transfer's recorded legs, the
//!   decision), so a forged message on the bus changes nothing.
//! - [`coordinator`]: collecting votes into a decision, the first record
//!   the decision log holds.
//! - [`presumed_abort`]: what to tell a participant that asks about a
//!   transaction with no decision, and what recovery does with each
//!   unfinished one.
//!
//! The failure this handles: any process stopping between any two steps.
//! The protocol is safe because every step whose loss could matter (a
//! begin, a yes vote, a commit decision, an applied commit) is recorded
//! durably before the next message is sent, every handler is idempotent,
//! and the only decision that can be taken without all votes is abort.
//! Abort decisions and "finished" marks may be lost in a crash: presumed
//! abort reads a lost abort as an abort, and a lost mark only means phase
//! two is sent again.
#![forbid(unsafe_code)]

pub mod coordinator;
pub mod log_backing;
pub mod participant;
pub mod presumed_abort;
pub mod shard_batch;
pub mod sharding;
