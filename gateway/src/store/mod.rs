//! The gateway's persistence: the registry, provisioning, sessions and gate reads, and the
//! group-commit writer. The pool and the queries that run on either engine come from
//! `parkflow-db`.

pub mod audit;
pub mod devices;
pub mod drivers;
pub mod keys;
pub mod passes;
pub mod provision;
pub mod registry;
pub mod review;
pub mod sessions;
pub mod writer;

pub use parkflow_db::{Db, StoreError, db_time};
