use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An ISO 4217 currency with its number of minor-unit digits.
///
/// Only currencies in Saldo's table are accepted, because the number of minor
/// units is part of how an amount is parsed and shown: `"1.234 EUR"` is an
/// error, `"1.234 KWD"` is not.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Currency {
    code: [u8; 3],
    exponent: u8,
}

/// Why a currency code was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CurrencyError {
    /// The code is not three upper-case ASCII letters.
    #[error("currency code {0:?} is not three upper-case letters (ISO 4217)")]
    CodeMalformed(String),
    /// The code is well formed but not in Saldo's ISO 4217 table.
    #[error("currency code {0:?} is not a supported ISO 4217 currency")]
    CodeUnknown(String),
}

/// The supported ISO 4217 currencies and their minor-unit exponents, sorted by
/// code so lookups can binary-search.
const CURRENCIES: &[(&str, u8)] = &[
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("INR", 2),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PLN", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("TND", 3),
    ("USD", 2),
    ("ZAR", 2),
];

impl Currency {
    /// Euro.
    pub const EUR: Currency = Currency {
        code: *b"EUR",
        exponent: 2,
    };
    /// US dollar.
    pub const USD: Currency = Currency {
        code: *b"USD",
        exponent: 2,
    };
    /// Japanese yen (no minor units).
    pub const JPY: Currency = Currency {
        code: *b"JPY",
        exponent: 0,
    };
    /// Kuwaiti dinar (three minor-unit digits).
    pub const KWD: Currency = Currency {
        code: *b"KWD",
        exponent: 3,
    };

    /// Looks a code up in the ISO 4217 table.
    pub fn from_code(code: &str) -> Result<Currency, CurrencyError> {
        let bytes = code.as_bytes();
        if bytes.len() != 3 || !bytes.iter().all(u8::is_ascii_uppercase) {
            return Err(CurrencyError::CodeMalformed(code.to_owned()));
        }
        match CURRENCIES.binary_search_by(|(known, _)| known.cmp(&code)) {
            Ok(index) => Ok(Currency {
                code: [bytes[0], bytes[1], bytes[2]],
                exponent: CURRENCIES[index].1,
            }),
            Err(_) => Err(CurrencyError::CodeUnknown(code.to_owned())),
        }
    }

    /// The three-letter code, for example `"EUR"`.
    pub fn code(&self) -> &str {
        // The constructor only admits ASCII upper-case letters.
        std::str::from_utf8(&self.code).expect("currency codes are ASCII")
    }

    /// How many decimal digits the minor unit has (2 for EUR, 0 for JPY).
    pub fn exponent(&self) -> u8 {
        self.exponent
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Currency {
    type Err = CurrencyError;
    fn from_str(code: &str) -> Result<Self, Self::Err> {
        Currency::from_code(code)
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Currency::from_code(&code).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[test]
    fn table_is_sorted_so_binary_search_finds_every_code() {
        // Proves the lookup table's precondition holds.
        assert!(CURRENCIES.windows(2).all(|pair| pair[0].0 < pair[1].0));
        for (code, exponent) in CURRENCIES {
            assert_eq!(Currency::from_code(code).unwrap().exponent(), *exponent);
        }
    }

    #[rstest]
    #[case("EUR", Ok(2))]
    #[case("JPY", Ok(0))]
    #[case("KWD", Ok(3))]
    #[case("eur", Err(CurrencyError::CodeMalformed("eur".into())))]
    #[case("EURO", Err(CurrencyError::CodeMalformed("EURO".into())))]
    #[case("", Err(CurrencyError::CodeMalformed("".into())))]
    #[case("XYZ", Err(CurrencyError::CodeUnknown("XYZ".into())))]
    fn codes_are_validated(#[case] code: &str, #[case] expected: Result<u8, CurrencyError>) {
        // Proves each kind of code is accepted or refused for the right reason.
        assert_eq!(Currency::from_code(code).map(|c| c.exponent()), expected);
    }

    #[test]
    fn serde_uses_the_code_and_rejects_unknown_codes() {
        // Proves currencies travel as their ISO code and are validated on the way in.
        assert_eq!(serde_json::to_string(&Currency::EUR).unwrap(), "\"EUR\"");
        assert_eq!(
            serde_json::from_str::<Currency>("\"USD\"").unwrap(),
            Currency::USD
        );
        assert!(serde_json::from_str::<Currency>("\"ABC\"").is_err());
    }
}
