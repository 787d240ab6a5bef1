//! The one timestamp text used on the wire and in the log: ISO 8601 UTC with 7 fractional digits and `Z`,
//! e.g. `2022-12-19T14:16:49.9605280Z` (the .NET "round-trip" form the original task shows).

use std::io::Write;

use chrono::{DateTime, Datelike, Timelike, Utc};

/// Appends `ts` to `out`; precision is cut (not rounded) to 100 ns.
pub fn write(ts: &DateTime<Utc>, out: &mut Vec<u8>) {
    // A leap second is carried by chrono as nanos >= 1e9; it is written as the last tick of the second.
    let ticks = ts.timestamp_subsec_nanos().min(999_999_999) / 100;
    // Fields read from the naive time: on a `DateTime` each accessor adds the (zero) offset again.
    let naive = ts.naive_utc();
    let year = naive.year();
    if !(0..=9999).contains(&year) {
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{}.{ticks:07}Z", ts.format("%Y-%m-%dT%H:%M:%S"));
        return;
    }
    // Digit by digit: chrono's pattern formatting cost the sink dearly (bench/RESULTS.md).
    let mut text = *b"0000-00-00T00:00:00.0000000Z";
    put_digits(&mut text[0..4], year as u32);
    put_digits(&mut text[5..7], naive.month());
    put_digits(&mut text[8..10], naive.day());
    put_digits(&mut text[11..13], naive.hour());
    put_digits(&mut text[14..16], naive.minute());
    put_digits(&mut text[17..19], naive.second());
    put_digits(&mut text[20..27], ticks);
    out.extend_from_slice(&text);
}

/// Writes `value` into `digits`, zero-padded to its length.
fn put_digits(digits: &mut [u8], mut value: u32) {
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// `ts` as an owned string, for serialisers that want one.
pub fn to_string(ts: &DateTime<Utc>) -> String {
    let mut out = Vec::with_capacity(28);
    write(ts, &mut out);
    String::from_utf8(out).expect("the timestamp format is ASCII")
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn seven_fractional_digits_and_z() {
        let ts = Utc.with_ymd_and_hms(2022, 12, 19, 14, 16, 49).unwrap()
            + chrono::Duration::nanoseconds(960_528_099);
        assert_eq!(to_string(&ts), "2022-12-19T14:16:49.9605280Z");
        let whole = Utc.with_ymd_and_hms(2023, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(to_string(&whole), "2023-01-02T03:04:05.0000000Z");
        let early = Utc.with_ymd_and_hms(7, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(to_string(&early), "0007-01-02T03:04:05.0000000Z");
        let far = Utc.with_ymd_and_hms(12345, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(to_string(&far), "+12345-01-02T03:04:05.0000000Z");
    }

    #[test]
    fn digits_match_chronos_own_formatting() {
        let mut nanos: i64 = 0;
        while nanos < 4_102_444_800_000_000_000 {
            let ts = DateTime::from_timestamp_nanos(nanos);
            let expected = format!(
                "{}.{:07}Z",
                ts.format("%Y-%m-%dT%H:%M:%S"),
                ts.timestamp_subsec_nanos() / 100
            );
            assert_eq!(to_string(&ts), expected);
            nanos += 77_777_777_777_777 + 123_457;
        }
    }
}
