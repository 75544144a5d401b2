//! Tests that pin behaviour `cargo mutants` found unchecked (issue #14,
//! point 16): the sign tests of money, the decimal form of zero, time read
//! back and dates across century and era edges, and the text forms of ids
//! and currencies. See `docs/testing.md`.

use rstest::rstest;

use crate::*;

#[rstest]
#[case::negative(-1, false, true)]
#[case::zero(0, false, false)]
#[case::positive(1, true, false)]
fn zero_is_neither_positive_nor_negative(
    #[case] amount_minor: i64,
    #[case] positive: bool,
    #[case] negative: bool,
) {
    // Proves the sign tests the ledger's "amount must be positive" and
    // balance rules rely on, at and around zero.
    let money = Money::from_minor(amount_minor, Currency::EUR);
    assert_eq!(money.is_positive(), positive);
    assert_eq!(money.is_negative(), negative);
}

#[rstest]
#[case::zero(0, Currency::EUR, "0.00")]
#[case::minus_one_cent(-1, Currency::EUR, "-0.01")]
#[case::zero_yen(0, Currency::JPY, "0")]
fn zero_has_no_minus_sign(
    #[case] amount_minor: i64,
    #[case] currency: Currency,
    #[case] text: &str,
) {
    // Proves the decimal form writes a sign only for amounts below zero.
    assert_eq!(Money::from_minor(amount_minor, currency).decimal(), text);
}

#[test]
fn a_timestamp_reads_back_and_measures_durations() {
    // Proves the milliseconds a timestamp was made from come back, and
    // `ms_since` is the time elapsed since an earlier instant.
    let earlier = Timestamp::from_unix_ms(1_234);
    let later = Timestamp::from_unix_ms(5_000);
    assert_eq!(earlier.unix_ms(), 1_234);
    assert_eq!(later.ms_since(earlier), 3_766);
}

#[rstest]
#[case::end_of_february_in_a_century_year(4_107_456_000_000, "2100-02-28T00:00:00.000Z")]
#[case::after_a_century_without_leap_day(4_107_542_400_000, "2100-03-01T00:00:00.000Z")]
#[case::last_day_of_an_era(13_574_563_200_000, "2400-02-29T00:00:00.000Z")]
#[case::first_day_of_an_era(13_574_649_600_000, "2400-03-01T00:00:00.000Z")]
#[case::start_of_the_current_era(951_868_800_000, "2000-03-01T00:00:00.000Z")]
fn dates_are_exact_across_century_and_era_edges(#[case] unix_ms: u64, #[case] text: &str) {
    // Proves the calendar conversion keeps the 100- and 400-year leap rules,
    // which only dates past 2100 exercise.
    assert_eq!(Timestamp::from_unix_ms(unix_ms).to_string(), text);
}

#[test]
fn ids_and_currencies_print_their_text_form() {
    // Proves `Display` and `Debug` of an id show its hexadecimal form, and a
    // currency's `Debug` its code, as logs and error messages quote them.
    let id = Id128::from_bytes(std::array::from_fn(|index| index as u8 * 17));
    let hex = "00112233445566778899aabbccddeeff";
    assert_eq!(id.to_string(), hex);
    assert_eq!(format!("{id:?}"), hex);
    assert_eq!(hex.parse::<Id128>(), Ok(id));
    assert_eq!(format!("{:?}", Currency::KWD), "KWD");
}
