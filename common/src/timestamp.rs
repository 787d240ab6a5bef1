//! The one timestamp text used on the wire and in the log: ISO 8601 UTC with 7 fractional digits and `Z`,
//! e.g. `2022-12-19T14:16:49.9605280Z` (the .NET "round-trip" form the original task shows).

use std::io::Write;

use chrono::{DateTime, Utc};

/// Appends `ts` to `out`; precision is cut (not rounded) to 100 ns.
pub fn write(ts: &DateTime<Utc>, out: &mut Vec<u8>) {
    // A leap second is carried by chrono as nanos >= 1e9; it is written as the last tick of the second.
    let ticks = ts.timestamp_subsec_nanos().min(999_999_999) / 100;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{}.{ticks:07}Z", ts.format("%Y-%m-%dT%H:%M:%S"));
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
    }
}
