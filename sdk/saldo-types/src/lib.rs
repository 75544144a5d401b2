//! Saldo's vocabulary, shared by every other crate.
//!
//! Contract:
//! - [`Money`] is an integer count of minor units with its [`Currency`]. Every
//!   arithmetic operation is checked: mixing currencies or overflowing is a
//!   [`MoneyError`], never a panic and never a wrap. There is no floating point
//!   anywhere in Saldo.
//! - [`Timestamp`] is a count of milliseconds since the Unix epoch that the
//!   *caller* supplies; nothing in the sdk reads a clock.
//! - Identifiers are validated newtypes. [`Id128`] values are derived from
//!   their cause with [`Id128::derive`], so a retried decision produces the same
//!   ids byte for byte.
//!
//! This crate does no I/O and builds for `wasm32-unknown-unknown`.

mod currency;
mod id;
mod money;
mod time;

pub use currency::{Currency, CurrencyError};
pub use id::{CorrelationId, CustomerId, Id128, IdError, OrderId, Principal, Sku};
pub use money::{Money, MoneyError};
pub use time::Timestamp;

#[cfg(test)]
mod mutants_tests;
