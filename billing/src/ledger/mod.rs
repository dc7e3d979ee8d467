//! The double-entry ledger (SPEC §4): every money movement is a journal entry whose lines sum to
//! zero. Debits are positive, credits negative. Rows are only ever inserted (the database refuses
//! updates and deletes); a correction is a new entry.
//!
//! Accounts:
//! - `receivable:drivers` — what drivers owe (fees not yet collected);
//! - `revenue:{lot}` — the lot's parking revenue (refunds are debited back to it);
//! - `cash:{provider}` — money held at a payment provider;
//! - `bad_debt:{lot}` — fees written off.

pub mod store;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A fee recognised but not collected at once (the driver owes it).
    Fee,
    /// A fee collected by auto-debit or at the exit, as it was recognised.
    Collection,
    /// A payment of what a driver owed (an invoice).
    Payment,
    Refund,
    WriteOff,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fee => "fee",
            Self::Collection => "collection",
            Self::Payment => "payment",
            Self::Refund => "refund",
            Self::WriteOff => "write_off",
        }
    }
}

/// One line of an entry: an account and a signed amount in minor units (debit positive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub account: String,
    pub amount_minor: i64,
}

/// A journal entry. `reference` is what it is about (a charge, an invoice payment, a refund);
/// the database keeps at most one entry of each kind per reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: Uuid,
    pub kind: EntryKind,
    pub reference: Uuid,
    pub currency: String,
    pub lines: Vec<Line>,
    pub created_at: DateTime<Utc>,
}

pub const RECEIVABLE: &str = "receivable:drivers";

pub fn revenue(lot: &str) -> String {
    format!("revenue:{lot}")
}

pub fn cash(provider: &str) -> String {
    format!("cash:{provider}")
}

pub fn bad_debt(lot: &str) -> String {
    format!("bad_debt:{lot}")
}

impl Entry {
    fn two_lines(
        kind: EntryKind,
        reference: Uuid,
        debit: String,
        credit: String,
        amount_minor: i64,
        currency: &str,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            id: Uuid::now_v7(),
            kind,
            reference,
            currency: currency.to_owned(),
            lines: vec![
                Line {
                    account: debit,
                    amount_minor,
                },
                Line {
                    account: credit,
                    amount_minor: -amount_minor,
                },
            ],
            created_at: at,
        }
    }

    /// A fee the driver now owes: receivable up, revenue earned.
    pub fn fee(
        charge: Uuid,
        lot: &str,
        amount_minor: i64,
        currency: &str,
        at: DateTime<Utc>,
    ) -> Self {
        Self::two_lines(
            EntryKind::Fee,
            charge,
            RECEIVABLE.into(),
            revenue(lot),
            amount_minor,
            currency,
            at,
        )
    }

    /// A fee collected as it was recognised: cash at the provider, revenue earned.
    pub fn collection(
        charge: Uuid,
        lot: &str,
        provider: &str,
        amount_minor: i64,
        currency: &str,
        at: DateTime<Utc>,
    ) -> Self {
        Self::two_lines(
            EntryKind::Collection,
            charge,
            cash(provider),
            revenue(lot),
            amount_minor,
            currency,
            at,
        )
    }

    /// A debt paid: cash at the provider, receivable down.
    pub fn payment(
        payment: Uuid,
        provider: &str,
        amount_minor: i64,
        currency: &str,
        at: DateTime<Utc>,
    ) -> Self {
        Self::two_lines(
            EntryKind::Payment,
            payment,
            cash(provider),
            RECEIVABLE.into(),
            amount_minor,
            currency,
            at,
        )
    }

    /// Money returned to a driver: revenue down, cash out.
    pub fn refund(
        refund: Uuid,
        lot: &str,
        provider: &str,
        amount_minor: i64,
        currency: &str,
        at: DateTime<Utc>,
    ) -> Self {
        Self::two_lines(
            EntryKind::Refund,
            refund,
            revenue(lot),
            cash(provider),
            amount_minor,
            currency,
            at,
        )
    }

    /// A debt given up: bad debt up, receivable down.
    pub fn write_off(
        invoice: Uuid,
        lot: &str,
        amount_minor: i64,
        currency: &str,
        at: DateTime<Utc>,
    ) -> Self {
        Self::two_lines(
            EntryKind::WriteOff,
            invoice,
            bad_debt(lot),
            RECEIVABLE.into(),
            amount_minor,
            currency,
            at,
        )
    }

    /// Whether the lines sum to zero.
    pub fn is_balanced(&self) -> bool {
        self.lines
            .iter()
            .map(|l| i128::from(l.amount_minor))
            .sum::<i128>()
            == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_entry_balances() {
        let at = Utc::now();
        let id = Uuid::now_v7();
        for entry in [
            Entry::fee(id, "lot-1", 1250, "CNY", at),
            Entry::collection(id, "lot-1", "simulated", 1250, "CNY", at),
            Entry::payment(id, "simulated", 1250, "CNY", at),
            Entry::refund(id, "lot-1", "simulated", 500, "CNY", at),
            Entry::write_off(id, "lot-1", 1250, "CNY", at),
        ] {
            assert!(entry.is_balanced(), "{entry:?}");
            assert_eq!(entry.lines.len(), 2);
            assert!(
                entry.lines[0].amount_minor > 0,
                "the first line is the debit"
            );
        }
    }

    #[test]
    fn a_fee_then_its_payment_leaves_nothing_receivable() {
        let at = Utc::now();
        let fee = Entry::fee(Uuid::now_v7(), "lot-1", 900, "CNY", at);
        let payment = Entry::payment(Uuid::now_v7(), "simulated", 900, "CNY", at);
        let receivable: i64 = fee
            .lines
            .iter()
            .chain(&payment.lines)
            .filter(|l| l.account == RECEIVABLE)
            .map(|l| l.amount_minor)
            .sum();
        assert_eq!(receivable, 0);
    }
}
