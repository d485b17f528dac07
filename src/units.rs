//! The one grammar for durations and byte sizes, used by the config file and by `ringlb bench`.
//!
//! Owns parsing and printing of these two value formats; the range a particular setting allows
//! (at least 1KiB, longer than zero, ...) belongs to whoever reads the setting. Errors are short
//! reasons in words; the caller adds where the value was and the value itself.
//!
//! # Durations
//!
//! A number and a unit with no space: `"250ms"`, `"1.5s"`, `"10m"`, `"1h"`.
//!
//! - The number is ASCII digits, optionally with a fraction (`"1.5s"`, `"0.25ms"`: digits on
//!   both sides of the dot). No sign, no exponent, no spaces.
//! - The unit is exactly one of `ns`, `us` (or `µs`), `ms`, `s`, `m` (minutes), `h`. It is
//!   required: `"30"` is refused. Compound values (`"1m30s"`) are refused; write `"90s"`.
//! - The value must be a whole number of nanoseconds and at most 2^64 − 1 milliseconds (about
//!   584 million years).
//!
//! # Byte sizes
//!
//! A whole number, optionally followed with no space by a unit:
//!
//! - none or `B`: bytes;
//! - binary, powers of 1024: `KiB`, `MiB`, `GiB`, and their short forms `K`/`k`, `M`/`m`, `G`/`g`,
//!   which mean the same (`"64k"` = `"64KiB"` = 65536);
//! - decimal, powers of 1000: `kB` or `KB`, `MB`, `GB` (`"64KB"` = 64000).
//!
//! No fraction, sign or space. The result must fit in 64 bits.

use std::time::Duration;

/// Why a duration has no unit.
pub const DURATION_UNIT_MISSING: &str =
    "a unit is missing: write ms, s, m or h after the number, e.g. \"3s\"";

/// Why a duration is not written as a number and a unit.
pub const DURATION_FORMAT: &str = "write a number and a unit (ns, us, ms, s, m or h) with no \
     space, e.g. \"250ms\", \"1.5s\", \"10m\"";

/// Why a byte size is not written as a whole number and an optional unit.
pub const BYTE_SIZE_FORMAT: &str = "write a whole number of bytes, optionally followed with no \
     space by a unit: B, KiB (or K), MiB (or M), GiB (or G) for powers of 1024, kB, MB, GB for \
     powers of 1000; e.g. 16384, \"64KiB\", \"64k\"";

/// The largest duration accepted: 2^64 − 1 milliseconds.
pub const MAX_DURATION: Duration = Duration::from_millis(u64::MAX);

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses a duration as described in the [module docs](self): `"250ms"`, `"1.5s"`, `"10m"`.
pub fn parse_duration(text: &str) -> Result<Duration, &'static str> {
    if text.starts_with('-') {
        return Err("a duration cannot be negative");
    }
    let whole_len = text.bytes().take_while(u8::is_ascii_digit).count();
    let (whole, rest) = text.split_at(whole_len);
    if whole.is_empty() {
        return Err(DURATION_FORMAT);
    }
    let (fraction, unit) = match rest.strip_prefix('.') {
        Some(after_dot) => {
            let len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            if len == 0 {
                return Err(DURATION_FORMAT);
            }
            after_dot.split_at(len)
        }
        None => ("", rest),
    };
    let nanos_per_unit: u128 = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => NANOS_PER_SEC,
        "m" => 60 * NANOS_PER_SEC,
        "h" => 3_600 * NANOS_PER_SEC,
        "" => return Err(DURATION_UNIT_MISSING),
        _ => return Err(DURATION_FORMAT),
    };
    const TOO_LARGE: &str = "the number is too large";
    let whole: u128 = whole.parse().map_err(|_| TOO_LARGE)?;
    let mut nanos = whole.checked_mul(nanos_per_unit).ok_or(TOO_LARGE)?;
    if !fraction.is_empty() {
        // fraction / 10^len units, exact in nanoseconds or refused. Trailing zeros say nothing.
        let fraction = fraction.trim_end_matches('0');
        let scale = u32::try_from(fraction.len())
            .ok()
            .and_then(|len| 10u128.checked_pow(len));
        let digits: u128 = if fraction.is_empty() {
            0
        } else {
            fraction
                .parse()
                .map_err(|_| "more precise than a nanosecond")?
        };
        let Some(scale) = scale else {
            return Err("more precise than a nanosecond");
        };
        let part = digits
            .checked_mul(nanos_per_unit)
            .filter(|part| part.is_multiple_of(scale))
            .ok_or("more precise than a nanosecond")?;
        nanos = nanos.checked_add(part / scale).ok_or(TOO_LARGE)?;
    }
    if nanos > MAX_DURATION.as_nanos() {
        return Err(TOO_LARGE);
    }
    // At most MAX_DURATION, so the seconds fit in a u64.
    let secs = u64::try_from(nanos / NANOS_PER_SEC).map_err(|_| TOO_LARGE)?;
    Ok(Duration::new(secs, (nanos % NANOS_PER_SEC) as u32))
}

/// Prints a duration in the largest unit that shows it exactly, in the grammar
/// [`parse_duration`] reads back: `"10m"`, `"1500ms"`, `"250us"`.
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".to_owned();
    }
    let (per_unit, unit) = [
        (3_600 * NANOS_PER_SEC, "h"),
        (60 * NANOS_PER_SEC, "m"),
        (NANOS_PER_SEC, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
    ]
    .into_iter()
    .find(|(per_unit, _)| ns.is_multiple_of(*per_unit))
    .unwrap_or((1, "ns"));
    format!("{}{unit}", ns / per_unit)
}

/// Parses a byte size as described in the [module docs](self): `"16384"`, `"64KiB"`, `"64k"`,
/// `"10MB"`.
pub fn parse_byte_size(text: &str) -> Result<u64, &'static str> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    if number.is_empty() {
        return Err(BYTE_SIZE_FORMAT);
    }
    let multiplier: u64 = match unit {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" | "m" => 1 << 20,
        "GiB" | "G" | "g" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(BYTE_SIZE_FORMAT),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or("the number is too large")
}

/// Prints bytes in the largest binary unit that shows them exactly: `"16KiB"`, `"1000B"`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    if bytes == 0 {
        return "0B".to_owned();
    }
    match UNITS.iter().find(|(size, _)| bytes.is_multiple_of(*size)) {
        Some((size, unit)) => format!("{}{unit}", bytes / size),
        None => format!("{bytes}B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_take_a_number_and_one_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("500µs"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(parse_duration("03s"), Ok(Duration::from_secs(3)));
    }

    #[test]
    fn durations_take_decimal_fractions_exactly() {
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.25ms"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0.001us"), Ok(Duration::from_nanos(1)));
        assert_eq!(parse_duration("2.000s"), Ok(Duration::from_secs(2)));
        assert_eq!(
            parse_duration("0.1234567890s"),
            Ok(Duration::from_nanos(123_456_789))
        );
        assert_eq!(
            parse_duration("0.0000000001s"),
            Err("more precise than a nanosecond")
        );
        assert_eq!(
            parse_duration("1.5ns"),
            Err("more precise than a nanosecond")
        );
        assert_eq!(
            parse_duration(&format!("1.{}1s", "0".repeat(60))),
            Err("more precise than a nanosecond")
        );
    }

    #[test]
    fn durations_refuse_words_spaces_signs_and_missing_units() {
        for bad in [
            "3 seconds",
            "3 s",
            "3seconds",
            "s",
            "",
            " 3s",
            "3s ",
            "1m30s",
            "+3s",
            ".5s",
            "5.s",
            "1.5.5s",
            "1e3ms",
            "3S",
            "3min",
        ] {
            assert_eq!(parse_duration(bad), Err(DURATION_FORMAT), "{bad:?}");
        }
        assert_eq!(parse_duration("-1s"), Err("a duration cannot be negative"));
        assert_eq!(parse_duration("30"), Err(DURATION_UNIT_MISSING));
        assert_eq!(parse_duration("1.5"), Err(DURATION_UNIT_MISSING));
        assert!(DURATION_UNIT_MISSING.starts_with("a unit is missing"));
    }

    #[test]
    fn durations_stop_at_the_largest_number_of_milliseconds() {
        for too_large in [
            "99999999999999999999h",
            "18446744073709551615h",
            "18446744073709551616ms",
            "18446744073709551615.001ms",
            "999999999999999999999999999999999999999999s",
        ] {
            assert_eq!(
                parse_duration(too_large),
                Err("the number is too large"),
                "{too_large}"
            );
        }
        assert_eq!(parse_duration("18446744073709551615ms"), Ok(MAX_DURATION));
    }

    #[test]
    fn durations_print_in_the_largest_exact_unit() {
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_micros(250)), "250us");
        assert_eq!(format_duration(Duration::from_nanos(1_001)), "1001ns");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn byte_sizes_take_binary_and_decimal_units() {
        assert_eq!(parse_byte_size("16384"), Ok(16384));
        assert_eq!(parse_byte_size("512B"), Ok(512));
        assert_eq!(parse_byte_size("16KiB"), Ok(16384));
        assert_eq!(parse_byte_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_byte_size("2GiB"), Ok(2 << 30));
        for (short, long) in [
            ("64k", "64KiB"),
            ("64K", "64KiB"),
            ("3m", "3MiB"),
            ("3M", "3MiB"),
            ("2g", "2GiB"),
            ("2G", "2GiB"),
        ] {
            assert_eq!(parse_byte_size(short), parse_byte_size(long), "{short}");
        }
        assert_eq!(parse_byte_size("64KB"), Ok(64_000));
        assert_eq!(parse_byte_size("64kB"), Ok(64_000));
        assert_eq!(parse_byte_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_byte_size("1GB"), Ok(1_000_000_000));
    }

    #[test]
    fn byte_sizes_refuse_spaces_signs_fractions_and_unknown_units() {
        for bad in [
            "16 KiB", "KiB", "-1KiB", "+1KiB", "1.5MiB", "", " 1", "1 ", "1kb", "1Kib", "1b",
            "1TiB", "1 B",
        ] {
            assert_eq!(parse_byte_size(bad), Err(BYTE_SIZE_FORMAT), "{bad:?}");
        }
        assert_eq!(
            parse_byte_size("17179869184GiB"),
            Err("the number is too large")
        );
        assert_eq!(
            parse_byte_size("99999999999999999999"),
            Err("the number is too large")
        );
    }

    #[test]
    fn byte_sizes_print_in_the_largest_exact_unit() {
        assert_eq!(format_bytes(16384), "16KiB");
        assert_eq!(format_bytes(1 << 20), "1MiB");
        assert_eq!(format_bytes(3 << 30), "3GiB");
        assert_eq!(format_bytes(1000), "1000B");
        assert_eq!(format_bytes(0), "0B");
    }

    proptest! {
        #[test]
        fn printed_durations_parse_back(nanos in any::<u64>(), millis in any::<u64>()) {
            for d in [Duration::from_nanos(nanos), Duration::from_millis(millis)] {
                prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
            }
        }

        #[test]
        fn whole_and_decimal_forms_of_a_duration_agree(whole in 0u64..1_000_000, millis in 0u32..1000) {
            let decimal = format!("{whole}.{millis:03}s");
            let expected = Duration::from_secs(whole) + Duration::from_millis(millis.into());
            prop_assert_eq!(parse_duration(&decimal), Ok(expected));
            let in_ms = format!("{}ms", whole * 1000 + u64::from(millis));
            prop_assert_eq!(parse_duration(&in_ms), Ok(expected));
        }

        #[test]
        fn printed_byte_sizes_parse_back(bytes in any::<u64>()) {
            prop_assert_eq!(parse_byte_size(&format_bytes(bytes)), Ok(bytes));
        }

        #[test]
        fn short_binary_units_agree_with_the_long_ones(n in 0u64..1 << 33) {
            for (short, long) in [("k", "KiB"), ("M", "MiB"), ("g", "GiB")] {
                prop_assert_eq!(
                    parse_byte_size(&format!("{n}{short}")),
                    parse_byte_size(&format!("{n}{long}"))
                );
            }
        }
    }
}
