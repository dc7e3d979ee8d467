//! The gateway's persistence: the registry, provisioning, sessions and gate reads, and the
//! group-commit writer. The pool and the queries that run on either engine come from
//! `parkflow-db`.

pub(crate) mod audit;
pub(crate) mod devices;
pub(crate) mod drivers;
pub(crate) mod keys;
pub mod leases;
pub(crate) mod passes;
pub(crate) mod pictures;
pub mod provision;
pub mod registry;
pub(crate) mod review;
pub(crate) mod sessions;
pub(crate) mod web_sessions;
pub mod writer;

pub use parkflow_db::{Db, StoreError, db_time};
