//! The whole-platform tests, one binary (linked once): devices over MQTT, checks over HTTP, on
//! SQLite and PostgreSQL, the embedded broker and Mosquitto. `support` is what they share.
//!
//! `tests/privacy.rs` stays a binary of its own: it installs the process's log subscriber at
//! TRACE to read every line, which would capture (and slow) every other test here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod support;

mod anpr;
mod arrears;
mod authz;
mod billing;
mod broker_acl;
mod city_view;
mod console;
mod demo;
mod devices;
mod drivers;
mod gated_lot;
mod mqtts;
mod nodes;
mod occupancy;
mod offline;
mod operators;
mod pay_page;
mod review;
mod stall;
mod writer;
