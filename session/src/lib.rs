//! A parking session's lifecycle, in one place below the gateway and billing.
//!
//! - [`status`]: what a session, a review case and a correction can be — enums end to end,
//!   text only at the row edge;
//! - [`model`]: an open session, how one ends, a review case;
//! - [`lifecycle`] and [`correction`]: every transition (open, close, send to review, pay at
//!   exit, pseudonymise; an operator's merge, split, plate edit, void or accept) as a pure
//!   function from what the caller read to the writes to make;
//! - [`repo`]: the one writer of `sessions`, `review_items` and `charge_queue`. The gate's group
//!   writer, the bay writer, review corrections, paid exits, the retention job and billing's
//!   charge worker all write those tables through it, inside their own transactions.
//!
//! See ARCHITECTURE.md ("Tables") for who writes every other table.

pub mod correction;
pub mod lifecycle;
pub mod model;
pub mod repo;
pub mod status;

pub use correction::{Correction, CorrectionError};
pub use model::{OpenSession, ReviewItem, SessionEnd};
pub use status::{ExitMatch, Resolution, ReviewKind, SessionStatus, Unknown, from_text};
