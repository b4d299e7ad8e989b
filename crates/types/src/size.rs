//! Sizes and rates as people read them: the one rule the CLI and the web
//! UI share, so a number reads the same wherever it is shown.

const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];

/// A byte count in binary units: below 1 KiB as whole bytes (`"512 B"`),
/// else with one decimal in the largest unit it reaches (`"1.0 KiB"`,
/// `"12.0 MiB"`, `"3.5 GiB"`), 1024 of each making the next. A value
/// that would round up to 1024.0 of a unit is shown in the next one.
/// Negative or non-finite input counts as 0. For a rate, append `/s`.
pub fn binary_size(bytes: f64) -> String {
    let bytes = if bytes.is_finite() { bytes.max(0.0) } else { 0.0 };
    if bytes < 1024.0 {
        return format!("{} B", bytes.round() as u64);
    }
    let mut v = bytes / 1024.0;
    let mut unit = 0;
    while unit + 1 < UNITS.len() && (v * 10.0).round() >= 10_240.0 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::binary_size;

    #[test]
    fn sizes_read_in_binary_units() {
        for (n, shown) in [
            (0.0, "0 B"),
            (-5.0, "0 B"),
            (f64::NAN, "0 B"),
            (1023.0, "1023 B"),
            (1024.0, "1.0 KiB"),
            (1536.0, "1.5 KiB"),
            (300_000.0, "293.0 KiB"),
            (1_048_575.0, "1.0 MiB"),
            (12.0 * 1_048_576.0, "12.0 MiB"),
            (15.2 * 1_048_576.0, "15.2 MiB"),
            (5.0 * 1_073_741_824.0, "5.0 GiB"),
            (2.0 * 1_099_511_627_776.0, "2.0 TiB"),
            (4096.0 * 1_125_899_906_842_624.0, "4096.0 PiB"),
        ] {
            assert_eq!(binary_size(n), shown, "{n}");
        }
    }
}
