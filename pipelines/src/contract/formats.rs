//! The text forms of two envelope fields, read without a general parser: `schema_version`'s
//! semver and `occurred_at`'s RFC 3339. Both run for every record.

/// The major version of a semver string (`1.2.3`, `1.2.3-rc.1`, `1.2.3+build`).
pub(super) fn semver_major(s: &str) -> Option<u64> {
    // On bytes: splitting a str by chars costs several times the rest of the envelope's checks.
    let b = s.as_bytes();
    let core = &b[..b.iter().position(|&c| c == b'-' || c == b'+').unwrap_or(b.len())];
    let mut parts = core.split(|&c| c == b'.');
    let (major, minor, patch) = (parts.next()?, parts.next()?, parts.next()?);
    let num = |p: &[u8]| !p.is_empty() && p.iter().all(u8::is_ascii_digit);
    if parts.next().is_some() || !num(major) || !num(minor) || !num(patch) {
        return None;
    }
    std::str::from_utf8(major).ok()?.parse().ok()
}

/// UTC microseconds of `YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|+HH:MM|-HH:MM)`, the form producers
/// send, without chrono's general parser (a tenth of the consumer's validation time); `None`
/// for anything else, valid or not, which chrono then judges. Agrees with chrono wherever it
/// answers (a differential property test checks it).
pub(super) fn rfc3339_micros(b: &[u8]) -> Option<i64> {
    fn digits(b: &[u8]) -> Option<i64> {
        b.iter().try_fold(0i64, |n, &c| c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0')))
    }
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (h, mi, sec) = (digits(&b[11..13])?, digits(&b[14..16])?, digits(&b[17..19])?);
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&mo) || d < 1 || d > month_days[(mo - 1) as usize] || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let mut rest = &b[19..];
    let mut micros = 0;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return None;
        }
        // Nanoseconds truncated to microseconds, as chrono's timestamp_micros does.
        micros = digits(&frac[..n])? * 10i64.pow(9 - n as u32) / 1000;
        rest = &frac[n..];
    }
    let offset = match rest {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (oh, om) = (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?);
            if oh > 23 || om > 59 {
                return None;
            }
            let secs = oh * 3600 + om * 60;
            if *sign == b'-' { -secs } else { secs }
        }
        _ => return None,
    };
    // Days from 1970-01-01 in the proleptic Gregorian calendar (Hinnant's days_from_civil).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60 + sec - offset) * 1_000_000 + micros)
}
