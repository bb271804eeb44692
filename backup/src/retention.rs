//! Which backups to keep: upstream's policy, with configurable horizons.
//!
//! By the age of a backup (from its name): younger than an hour, keep all;
//! younger than the hourly horizon, keep the oldest of each clock hour;
//! younger than the daily horizon, keep the oldest of each UTC day; older,
//! delete. A name that does not parse is never deleted, and neither are the
//! newest [`MIN_KEPT_BACKUPS`] whatever the clock says (a clock that jumped
//! years ahead makes every backup look ancient).

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Datelike, Timelike, Utc};

use crate::store::parse_backup_name;

/// The horizons (upstream: `ETCD_MANAGER_HOURLY_BACKUPS_RETENTION`, `ETCD_MANAGER_DAILY_BACKUPS_RETENTION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub hourly: Duration,
    pub daily: Duration,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            hourly: Duration::from_secs(7 * 86_400),
            daily: Duration::from_secs(90 * 86_400),
        }
    }
}

/// A duration [`parse_retention`] cannot read; `input` is the text as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration; write e.g. 168h, 7d or 1y")]
    Empty,
    #[error("'{input}' is not a duration: expected a number at '{at}'; write e.g. 168h, 7d or 1y")]
    NoNumber { input: String, at: String },
    #[error("'{input}': bad number '{number}'")]
    BadNumber { input: String, number: String },
    #[error("'{input}': unknown unit '{unit}'; use ns, us, ms, s, m, h, d or y")]
    UnknownUnit { input: String, unit: String },
    #[error("'{input}' is too long a duration; write e.g. 168h, 7d or 1y")]
    TooLong { input: String },
}

/// Parse a Go duration with upstream's extra units: `168h`, `1h30m`, `7d`, `1y`, `90d12h`.
pub fn parse_retention(s: &str) -> Result<Duration, DurationError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(DurationError::NoNumber {
                input: s.to_string(),
                at: rest.to_string(),
            });
        }
        let n: f64 = rest[..num_len]
            .parse()
            .map_err(|_| DurationError::BadNumber {
                input: s.to_string(),
                number: rest[..num_len].to_string(),
            })?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "y" => 365.0 * 86_400.0,
            u => {
                return Err(DurationError::UnknownUnit {
                    input: s.to_string(),
                    unit: u.to_string(),
                });
            }
        };
        rest = &rest[unit_len..];
        total += n * secs;
    }
    Duration::try_from_secs_f64(total).map_err(|_| DurationError::TooLong {
        input: s.to_string(),
    })
}

/// The newest backups that are kept whatever their age.
pub const MIN_KEPT_BACKUPS: usize = 10;

/// The backups to delete under `policy` at `now`. Pure.
pub fn select_for_deletion(
    names: &[String],
    now: DateTime<Utc>,
    policy: &RetentionPolicy,
) -> Vec<String> {
    let mut parsed: Vec<(DateTime<Utc>, u32, &String)> = names
        .iter()
        .filter_map(|n| parse_backup_name(n).map(|(t, seq)| (t, seq, n)))
        .collect();
    parsed.sort();
    // A name listed twice is one backup (found by fuzzing: a duplicate used
    // to push a copy of one of the newest out of the kept window).
    parsed.dedup_by(|a, b| a.2 == b.2);
    let newest_kept = parsed.len().saturating_sub(MIN_KEPT_BACKUPS);
    let mut hours_kept = BTreeSet::new();
    let mut days_kept = BTreeSet::new();
    let mut delete = vec![];
    for (i, (t, _, name)) in parsed.into_iter().enumerate() {
        let age = (now - t).to_std().unwrap_or(Duration::ZERO);
        let keep = if i >= newest_kept || age < Duration::from_secs(3600) {
            true
        } else if age < policy.hourly {
            hours_kept.insert((t.year(), t.ordinal(), t.hour()))
        } else if age < policy.daily {
            days_kept.insert((t.year(), t.ordinal()))
        } else {
            false
        };
        if !keep {
            delete.push(name.clone());
        }
    }
    delete
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_clock_jump_never_deletes_the_newest_backups() {
        let start = at(2026, 1, 1, 0, 0);
        let names: Vec<String> = (0..30)
            .map(|i| name(start + chrono::Duration::hours(i), i as u32))
            .collect();
        // The clock jumps 20 years ahead: every backup is past the daily horizon.
        let later = at(2046, 1, 1, 0, 0);
        let doomed = select_for_deletion(&names, later, &RetentionPolicy::default());
        assert_eq!(doomed, names[..20].to_vec());
        // Absurd durations are refused, not a panic.
        for s in [
            "99999999999999999999999y",
            "1e400s",
            "184467440737095516160s",
        ] {
            assert!(parse_retention(s).is_err(), "{s}");
        }
    }

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    fn name(t: DateTime<Utc>, seq: u32) -> String {
        crate::store::format_backup_name(t.into(), seq)
    }

    #[test]
    fn durations_parse_like_upstream() {
        assert_eq!(
            parse_retention("168h").unwrap(),
            Duration::from_secs(168 * 3600)
        );
        assert_eq!(
            parse_retention("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_retention("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_retention("1y").unwrap(),
            Duration::from_secs(365 * 86_400)
        );
        for bad in ["", "7", "d", "7w", "1h-"] {
            assert!(parse_retention(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keeps_all_recent_then_hourly_then_daily() {
        let now = at(2024, 3, 31, 12, 0);
        let p = RetentionPolicy {
            hourly: Duration::from_secs(2 * 86_400),
            daily: Duration::from_secs(10 * 86_400),
        };
        // The newest MIN_KEPT_BACKUPS are kept whatever their age: make them recent.
        let recent =
            (0..MIN_KEPT_BACKUPS as u32).map(|i| name(at(2024, 3, 31, 11, 40 + i), 10 + i));
        let names: Vec<String> = vec![
            name(at(2024, 3, 31, 11, 30), 1), // < 1h: keep
            name(at(2024, 3, 31, 11, 10), 2), // < 1h: keep
            name(at(2024, 3, 31, 9, 5), 3),   // hourly: oldest of 09h: keep
            name(at(2024, 3, 31, 9, 50), 4),  // hourly: second of 09h: delete
            name(at(2024, 3, 28, 1, 0), 5),   // daily: oldest of the 28th: keep
            name(at(2024, 3, 28, 23, 0), 6),  // daily: second of the 28th: delete
            name(at(2024, 3, 1, 0, 0), 7),    // older than the daily horizon: delete
            "not-a-backup-name".to_string(),  // never deleted
        ]
        .into_iter()
        .chain(recent)
        .collect();
        let mut got = select_for_deletion(&names, now, &p);
        got.sort();
        let mut want = vec![names[3].clone(), names[5].clone(), names[6].clone()];
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn every_backup_of_the_last_hour_survives() {
        let now = at(2024, 1, 1, 10, 0);
        let names: Vec<String> = (0..50)
            .map(|i| {
                name(
                    at(2024, 1, 1, 9, 1) + chrono::Duration::seconds(i * 60),
                    i as u32,
                )
            })
            .collect();
        assert!(select_for_deletion(&names, now, &RetentionPolicy::default()).is_empty());
    }
}
