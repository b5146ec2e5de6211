//! strata: real-time customer tiering and churn alerts.
//!
//! Data flow: a shell (the file shell in [`replay`], the [`demo`], later the Kafka
//! service) reads raw messages and [`event::parse_event`] validates them into typed
//! events or dead letters. The [`processor::Processor`] feeds events, in order, to the
//! pure [`engine::Engine`], which updates each customer's rolling state
//! ([`customer::CustomerState`]), places the customer in tiers ([`policy`]) against the
//! population thresholds ([`population`]), and emits [`output::Output`] events. The
//! processor keeps a write-back cache over the [`store::Store`] (RocksDB), fires the
//! timers that make figures follow the calendar, recalibrates thresholds once per
//! as-of day, and commits each batch of state in one atomic write. [`dump`] evaluates
//! the stored population exactly at any day.

pub mod audience;
pub mod cluster;
pub mod config;
pub mod customer;
pub mod day;
pub mod demo;
pub mod derived;
pub mod dump;
pub mod engine;
pub mod event;
pub mod gen;
pub mod hint;
pub mod http;
pub mod kafka;
pub mod output;
pub mod partitions;
pub mod policy;
pub mod population;
pub mod predict;
pub mod processor;
pub mod replay;
pub mod report;
pub mod service;
pub mod store;
pub mod telemetry;
