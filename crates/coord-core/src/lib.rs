//! `coord-core`: the session directory protocol shared by the coord tools.
//!
//! Processes coordinate through one session directory. This crate owns everything about
//! that directory: where each file lives ([`layout`]), what each record holds
//! ([`record`]), how files are written and read ([`fsio`]), how locks are taken
//! ([`lock`]), which ids are valid ([`id`]), and the operations the binaries expose
//! ([`session`], [`registry`], [`state`], [`mailbox`], [`task`], [`results`], [`report`],
//! [`archive`]). The binaries
//! are thin: parse arguments, call
//! in here, print through [`output`], exit through [`cli::run`].
#![deny(missing_docs)]

pub mod archive;
pub mod cli;
pub mod dirents;
pub mod env;
pub mod error;
pub mod fsio;
pub mod health;
pub mod id;
pub mod layout;
pub mod lock;
pub mod mailbox;
pub mod output;
pub mod overview;
pub mod record;
pub mod registry;
pub mod report;
pub mod results;
pub mod session;
pub mod state;
pub mod sys;
pub mod task;
pub mod time;

pub use error::{Error, Result};
pub use layout::{Base, SessionDir};
