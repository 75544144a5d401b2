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
//!
//! # Example
//!
//! ```
//! use saldo_types::{Currency, Id128, Money, MoneyError};
//!
//! let price = Money::parse("12.50", Currency::EUR)?;
//! let total = price.checked_mul(3)?;
//! assert_eq!(total.amount_minor(), 3_750);
//! assert_eq!(total.to_string(), "37.50 EUR");
//!
//! // Mixing currencies is a value, not a panic.
//! let dollars = Money::parse("1", Currency::USD)?;
//! assert!(matches!(
//!     total.checked_add(dollars),
//!     Err(MoneyError::CurrencyMismatch { .. })
//! ));
//!
//! // Ids derived from the same cause are the same, so a retry repeats them.
//! let first = Id128::derive("posting", &[b"charge", b"order-1"]);
//! assert_eq!(first, Id128::derive("posting", &[b"charge", b"order-1"]));
//! # Ok::<(), MoneyError>(())
//! ```

mod currency;
mod id;
mod money;
mod time;

pub use currency::{Currency, CurrencyError};
pub use id::{
    CorrelationId, CustomerId, Id128, IdError, OrderId, Principal, Sku, TEXT_ID_LENGTH_MAX,
};
pub use money::{Money, MoneyError};
pub use time::Timestamp;

#[cfg(test)]
mod mutants_tests;
