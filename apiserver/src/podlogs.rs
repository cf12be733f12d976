//! A deployment's log lines, from its predictor pods' logs as the Kubernetes API returns them
//! with `timestamps=true` (pure); each API shows them in its own shape.

use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};

use crate::ultralytics::cluster::PodLog;

/// One log line.
#[derive(Clone, Debug, PartialEq)]
pub struct LogEntry {
    /// Stable id of the line (pod, time and text hashed), by which clients drop repeats when
    /// they follow.
    pub id: String,
    /// The line, prefixed with the pod's name: `[<pod>] <line>`.
    pub message: String,
    /// `ERROR`, `WARNING`, `INFO` or `DEBUG`, from the line's level; `DEFAULT` when it names none.
    pub severity: &'static str,
    /// When it was logged.
    pub time: DateTime<Utc>,
}

impl LogEntry {
    /// The time in RFC 3339 with microseconds and `+00:00` (Python's `fromisoformat` reads it).
    pub fn timestamp(&self) -> String {
        self.time.to_rfc3339_opts(SecondsFormat::Micros, false)
    }
}

/// The level a log line names (the predictor logs `tracing`'s `ERROR`/`WARN`/`INFO`/`DEBUG`
/// near its start).
fn severity(line: &str) -> &'static str {
    let head: String = line.chars().take(64).collect();
    for (word, sev) in
        [("ERROR", "ERROR"), ("WARN", "WARNING"), ("INFO", "INFO"), ("DEBUG", "DEBUG"), ("TRACE", "DEBUG")]
    {
        if head.split(|c: char| !c.is_ascii_alphabetic()).any(|w| w == word) {
            return sev;
        }
    }
    "DEFAULT"
}

/// Entries of `logs` logged in `from..=to`, newest first, at most `max`. Lines whose time
/// prefix does not parse are skipped (the API server always sends one with `timestamps`).
pub fn entries(logs: &[PodLog], from: DateTime<Utc>, to: DateTime<Utc>, max: usize) -> Vec<LogEntry> {
    let mut all: Vec<LogEntry> = Vec::new();
    for log in logs {
        for line in log.text.lines() {
            let Some((ts, text)) = line.split_once(' ') else { continue };
            let Ok(t) = DateTime::parse_from_rfc3339(ts) else { continue };
            let t = t.with_timezone(&Utc);
            if t < from || t > to {
                continue;
            }
            let id = Sha256::digest(format!("{}\n{ts}\n{text}", log.pod).as_bytes());
            all.push(LogEntry {
                id: hex::encode(&id[..8]),
                message: format!("[{}] {text}", log.pod),
                severity: severity(text),
                time: t,
            });
        }
    }
    all.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| a.id.cmp(&b.id)));
    all.truncate(max);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc)
    }

    #[test]
    fn lines_in_the_window_newest_first_with_levels_and_stable_ids() {
        let logs = vec![
            PodLog {
                pod: "p-1".into(),
                text: "2026-12-02T05:00:00.000000001Z 2026-12-02T05:00:00Z  INFO ocellus_predictor: model loaded\n\
                       2026-12-02T05:00:02.5Z 2026-12-02T05:00:02Z  WARN ocellus_predictor: slow\n\
                       not a timestamped line\n"
                    .into(),
            },
            PodLog {
                pod: "p-2".into(),
                text: "2026-12-02T05:00:01Z plain output\n2026-12-02T06:00:00Z later\n".into(),
            },
        ];
        let e = entries(&logs, t("2026-12-02T04:59:00Z"), t("2026-12-02T05:30:00Z"), 50);
        let got: Vec<_> = e.iter().map(|e| (e.severity, e.message.as_str())).collect();
        assert_eq!(
            got,
            [
                ("WARNING", "[p-1] 2026-12-02T05:00:02Z  WARN ocellus_predictor: slow"),
                ("DEFAULT", "[p-2] plain output"),
                ("INFO", "[p-1] 2026-12-02T05:00:00Z  INFO ocellus_predictor: model loaded"),
            ]
        );
        assert_eq!(e[0].timestamp(), "2026-12-02T05:00:02.500000+00:00");
        assert!(e.iter().all(|x| x.id.len() == 16));
        assert_eq!(entries(&logs, t("2026-12-02T04:59:00Z"), t("2026-12-02T05:30:00Z"), 50), e, "ids are stable");
        assert_eq!(entries(&logs, t("2026-12-02T04:59:00Z"), t("2026-12-02T07:00:00Z"), 1)[0].message, "[p-2] later");
    }
}
