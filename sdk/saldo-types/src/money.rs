use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Currency, CurrencyError};

/// An amount of money: a signed integer count of minor units (cents for EUR,
/// yen for JPY) and its currency.
///
/// Signed, because balances of some accounts (the funding source) go below
/// zero; operations that need a positive amount say so and check it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Money {
    amount_minor: i64,
    currency: Currency,
}

/// Why an arithmetic operation or a parse on [`Money`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// The two operands are in different currencies.
    #[error("cannot combine {left} with {right}")]
    CurrencyMismatch {
        /// The currency of the left operand.
        left: Currency,
        /// The currency of the right operand.
        right: Currency,
    },
    /// The result does not fit in 64 bits of minor units.
    #[error("amount overflows the range of {currency} minor units")]
    Overflow {
        /// The currency of the operation.
        currency: Currency,
    },
    /// The text is not a decimal amount.
    #[error("{0:?} is not a decimal amount (expected for example \"12.34 EUR\")")]
    AmountMalformed(String),
    /// The text has more fraction digits than the currency's minor unit.
    #[error("{text:?} has more than {exponent} fraction digits, the minor unit of {currency}")]
    PrecisionExceeded {
        /// The offending text.
        text: String,
        /// The currency whose minor unit was exceeded.
        currency: Currency,
        /// The currency's number of minor-unit digits.
        exponent: u8,
    },
    /// The currency part of the text is not a supported currency.
    #[error(transparent)]
    Currency(#[from] CurrencyError),
}

impl Money {
    /// An amount of `amount_minor` minor units of `currency`.
    pub const fn from_minor(amount_minor: i64, currency: Currency) -> Money {
        Money {
            amount_minor,
            currency,
        }
    }

    /// Zero in `currency`.
    pub const fn zero(currency: Currency) -> Money {
        Money::from_minor(0, currency)
    }

    /// The count of minor units.
    pub const fn amount_minor(&self) -> i64 {
        self.amount_minor
    }

    /// The currency.
    pub const fn currency(&self) -> Currency {
        self.currency
    }

    /// True when the amount is strictly greater than zero.
    pub const fn is_positive(&self) -> bool {
        self.amount_minor > 0
    }

    /// True when the amount is strictly below zero.
    pub const fn is_negative(&self) -> bool {
        self.amount_minor < 0
    }

    fn same_currency(&self, other: &Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch {
                left: self.currency,
                right: other.currency,
            })
        }
    }

    /// `self + other`, refusing mixed currencies and overflow.
    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(&other)?;
        self.amount_minor
            .checked_add(other.amount_minor)
            .map(|amount_minor| Money::from_minor(amount_minor, self.currency))
            .ok_or(MoneyError::Overflow {
                currency: self.currency,
            })
    }

    /// `self - other`, refusing mixed currencies and overflow.
    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(&other)?;
        self.amount_minor
            .checked_sub(other.amount_minor)
            .map(|amount_minor| Money::from_minor(amount_minor, self.currency))
            .ok_or(MoneyError::Overflow {
                currency: self.currency,
            })
    }

    /// `self * factor`, refusing overflow (used for price times quantity).
    pub fn checked_mul(self, factor: i64) -> Result<Money, MoneyError> {
        self.amount_minor
            .checked_mul(factor)
            .map(|amount_minor| Money::from_minor(amount_minor, self.currency))
            .ok_or(MoneyError::Overflow {
                currency: self.currency,
            })
    }

    /// `-self`, refusing the one value whose negation overflows.
    pub fn checked_neg(self) -> Result<Money, MoneyError> {
        self.amount_minor
            .checked_neg()
            .map(|amount_minor| Money::from_minor(amount_minor, self.currency))
            .ok_or(MoneyError::Overflow {
                currency: self.currency,
            })
    }

    /// Parses a decimal amount such as `"12.34"` or `"-0.5"` in `currency`.
    ///
    /// At most `currency.exponent()` fraction digits are accepted; an amount is
    /// never rounded.
    pub fn parse(text: &str, currency: Currency) -> Result<Money, MoneyError> {
        let malformed = || MoneyError::AmountMalformed(text.to_owned());
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, fraction) = match digits.split_once('.') {
            Some((whole, fraction)) if !fraction.is_empty() => (whole, fraction),
            Some(_) => return Err(malformed()),
            None => (digits, ""),
        };
        let all_digits = |part: &str| part.bytes().all(|byte| byte.is_ascii_digit());
        if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
            return Err(malformed());
        }
        let exponent = currency.exponent();
        if fraction.len() > usize::from(exponent) {
            return Err(MoneyError::PrecisionExceeded {
                text: text.to_owned(),
                currency,
                exponent,
            });
        }
        // Accumulate in 128 bits and narrow once, so that the most negative
        // amount (whose magnitude does not fit in i64) still parses.
        let overflow = || MoneyError::Overflow { currency };
        let mut magnitude: i128 = 0;
        let padding = usize::from(exponent) - fraction.len();
        for byte in whole
            .bytes()
            .chain(fraction.bytes())
            .chain(std::iter::repeat_n(b'0', padding))
        {
            magnitude = magnitude
                .checked_mul(10)
                .and_then(|value| value.checked_add(i128::from(byte - b'0')))
                .ok_or_else(overflow)?;
        }
        let signed = if negative { -magnitude } else { magnitude };
        let amount_minor = i64::try_from(signed).map_err(|_| overflow())?;
        Ok(Money::from_minor(amount_minor, currency))
    }

    /// The amount as a decimal string without the currency, e.g. `"12.34"`.
    pub fn decimal(&self) -> String {
        let exponent = u32::from(self.currency.exponent());
        let sign = if self.amount_minor < 0 { "-" } else { "" };
        let magnitude = self.amount_minor.unsigned_abs();
        if exponent == 0 {
            return format!("{sign}{magnitude}");
        }
        let scale = 10u64.pow(exponent);
        format!(
            "{sign}{}.{:0width$}",
            magnitude / scale,
            magnitude % scale,
            width = exponent as usize
        )
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.decimal(), self.currency)
    }
}

impl FromStr for Money {
    type Err = MoneyError;

    /// Parses `"12.34 EUR"`, the format [`Money`]'s `Display` writes.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (amount, code) = text
            .split_once(' ')
            .ok_or_else(|| MoneyError::AmountMalformed(text.to_owned()))?;
        Money::parse(amount, Currency::from_code(code)?)
    }
}

#[cfg(test)]
mod tests {
    use quickcheck::quickcheck;
    use rstest::rstest;

    use super::*;

    const EUR: Currency = Currency::EUR;

    #[rstest]
    #[case("12.34", EUR, Ok(1234))]
    #[case("12.3", EUR, Ok(1230))]
    #[case("12", EUR, Ok(1200))]
    #[case("-0.05", EUR, Ok(-5))]
    #[case("0", Currency::JPY, Ok(0))]
    #[case("1500", Currency::JPY, Ok(1500))]
    #[case("1.234", Currency::KWD, Ok(1234))]
    #[case("92233720368547758.07", EUR, Ok(i64::MAX))]
    #[case("-92233720368547758.08", EUR, Ok(i64::MIN))]
    #[case("-92233720368547758.09", EUR, Err(MoneyError::Overflow { currency: EUR }))]
    #[case("100000000000000000000000000000000000000000", EUR, Err(MoneyError::Overflow { currency: EUR }))]
    #[case("92233720368547758.08", EUR, Err(MoneyError::Overflow { currency: EUR }))]
    #[case("1.234", EUR, Err(MoneyError::PrecisionExceeded { text: "1.234".into(), currency: EUR, exponent: 2 }))]
    #[case("1.5", Currency::JPY, Err(MoneyError::PrecisionExceeded { text: "1.5".into(), currency: Currency::JPY, exponent: 0 }))]
    #[case("", EUR, Err(MoneyError::AmountMalformed("".into())))]
    #[case("1.", EUR, Err(MoneyError::AmountMalformed("1.".into())))]
    #[case(".5", EUR, Err(MoneyError::AmountMalformed(".5".into())))]
    #[case("1e3", EUR, Err(MoneyError::AmountMalformed("1e3".into())))]
    #[case("+1", EUR, Err(MoneyError::AmountMalformed("+1".into())))]
    #[case("1.-5", EUR, Err(MoneyError::AmountMalformed("1.-5".into())))]
    fn parse_accepts_exact_decimals_only(
        #[case] text: &str,
        #[case] currency: Currency,
        #[case] expected: Result<i64, MoneyError>,
    ) {
        // Proves parsing never rounds and names the reason for each refusal.
        assert_eq!(
            Money::parse(text, currency).map(|m| m.amount_minor()),
            expected
        );
    }

    #[rstest]
    #[case(Money::from_minor(1234, EUR), "12.34 EUR")]
    #[case(Money::from_minor(-5, EUR), "-0.05 EUR")]
    #[case(Money::from_minor(7, Currency::JPY), "7 JPY")]
    #[case(Money::from_minor(i64::MIN, EUR), "-92233720368547758.08 EUR")]
    fn display_writes_the_minor_unit_exactly(#[case] money: Money, #[case] text: &str) {
        // Proves formatting is exact, including the most negative amount.
        assert_eq!(money.to_string(), text);
    }

    #[rstest]
    #[case(Money::from_minor(1, EUR), Money::from_minor(1, Currency::USD), Err(MoneyError::CurrencyMismatch { left: EUR, right: Currency::USD }))]
    #[case(Money::from_minor(i64::MAX, EUR), Money::from_minor(1, EUR), Err(MoneyError::Overflow { currency: EUR }))]
    #[case(
        Money::from_minor(2, EUR),
        Money::from_minor(3, EUR),
        Ok(Money::from_minor(5, EUR))
    )]
    fn addition_is_checked(
        #[case] left: Money,
        #[case] right: Money,
        #[case] expected: Result<Money, MoneyError>,
    ) {
        // Proves mixing currencies and overflowing are typed errors, not panics.
        assert_eq!(left.checked_add(right), expected);
    }

    #[test]
    fn subtraction_multiplication_and_negation_are_checked() {
        // Proves the remaining operators refuse overflow instead of wrapping.
        let min = Money::from_minor(i64::MIN, EUR);
        assert_eq!(
            min.checked_neg(),
            Err(MoneyError::Overflow { currency: EUR })
        );
        assert_eq!(
            min.checked_sub(Money::from_minor(1, EUR)),
            Err(MoneyError::Overflow { currency: EUR })
        );
        assert_eq!(
            Money::from_minor(i64::MAX / 2 + 1, EUR).checked_mul(2),
            Err(MoneyError::Overflow { currency: EUR })
        );
        assert_eq!(
            Money::from_minor(250, EUR).checked_mul(3),
            Ok(Money::from_minor(750, EUR))
        );
    }

    #[test]
    fn from_str_reads_amount_and_code() {
        // Proves the textual form round-trips and unknown currencies are refused.
        assert_eq!(
            "12.34 EUR".parse::<Money>(),
            Ok(Money::from_minor(1234, EUR))
        );
        assert!(matches!(
            "12.34 XXX".parse::<Money>(),
            Err(MoneyError::Currency(_))
        ));
        assert!(matches!(
            "12.34".parse::<Money>(),
            Err(MoneyError::AmountMalformed(_))
        ));
    }

    quickcheck! {
        fn display_then_parse_round_trips(amount_minor: i64) -> bool {
            // Proves any amount survives formatting and parsing unchanged.
            [EUR, Currency::JPY, Currency::KWD].iter().all(|currency| {
                let money = Money::from_minor(amount_minor, *currency);
                money.to_string().parse::<Money>() == Ok(money)
            })
        }

        fn checked_add_matches_wide_arithmetic(left: i64, right: i64) -> bool {
            // Proves checked addition either equals the exact sum or reports overflow.
            let exact = i128::from(left) + i128::from(right);
            match Money::from_minor(left, EUR).checked_add(Money::from_minor(right, EUR)) {
                Ok(sum) => i128::from(sum.amount_minor()) == exact,
                Err(MoneyError::Overflow { .. }) => i64::try_from(exact).is_err(),
                Err(_) => false,
            }
        }
    }
}
