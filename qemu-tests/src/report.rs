//! Reading the kernel's report from its serial log.
//!
//! In test mode the kernel prints `running N tests`, then one line per test,
//! `test NAME ... ok`, `test NAME ... FAILED: why` or `test NAME ... ignored, why`
//! (a test that does not apply to this machine), and closes with
//! `N passed, M failed` (optionally followed by `, K skipped`). A panic prints a line with `KERNEL PANIC:`; in bench mode
//! the kernel prints `bench NAME VALUE UNIT` lines, in list mode `listed NAME`
//! lines. Everything else is ignored.

/// What one test run said about itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// N from `running N tests`.
    pub announced: Option<u32>,
    pub tests: Vec<TestResult>,
    /// The last closing line.
    pub summary: Option<Summary>,
    /// The text after `KERNEL PANIC:` on the first panic line.
    pub panic: Option<String>,
    /// The last `test NAME ... ` line that never got its verdict (a panic or hang
    /// inside that test).
    pub unfinished: Option<String>,
    pub benches: Vec<BenchSample>,
    /// In list mode: every `listed NAME` line's test name, in order.
    pub listed: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestResult {
    pub name: String,
    pub outcome: TestOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TestOutcome {
    Ok,
    /// The reason the kernel gave (may be empty).
    Failed(String),
    /// Not run here (e.g. hardware this configuration lacks); the reason.
    Ignored(String),
}

/// The closing `N passed, M failed[, K skipped]` line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub passed: u32,
    pub failed: u32,
    /// 0 when the line does not say.
    pub skipped: u32,
}

impl Summary {
    /// Every test the line accounts for.
    pub fn total(&self) -> u64 {
        u64::from(self.passed) + u64::from(self.failed) + u64::from(self.skipped)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} passed, {} failed", self.passed, self.failed)?;
        if self.skipped != 0 {
            write!(f, ", {} skipped", self.skipped)?;
        }
        Ok(())
    }
}

/// One `bench NAME VALUE UNIT` line: a counter the kernel read inside QEMU.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchSample {
    pub name: String,
    pub value: f64,
    pub unit: String,
}

const PANIC_MARKER: &str = "KERNEL PANIC:";

impl Report {
    pub fn parse(log: &str) -> Report {
        let mut report = Report::default();
        for line in log.lines() {
            let line = line.trim_end_matches(['\r', '\n', ' ']);
            if let Some(at) = line.find(PANIC_MARKER) {
                if report.panic.is_none() {
                    report.panic = Some(line[at + PANIC_MARKER.len()..].trim().to_string());
                }
                // A panic inside a test lands on that test's line.
                if let Some(name) = started_test(&line[..at]) {
                    report.unfinished = Some(name.to_string());
                }
                continue;
            }
            if let Some(count) = parse_announcement(line) {
                report.announced = Some(count);
            } else if let Some(summary) = parse_summary(line) {
                report.summary = Some(summary);
            } else if let Some(sample) = parse_bench(line) {
                report.benches.push(sample);
            } else if let Some(name) = line.strip_prefix("listed ") {
                report.listed.push(name.to_string());
            } else if let Some((name, verdict)) = line
                .strip_prefix("test ")
                .and_then(|rest| rest.split_once(" ... "))
            {
                match parse_verdict(verdict) {
                    Some(outcome) => {
                        if report.unfinished.as_deref() == Some(name) {
                            report.unfinished = None;
                        }
                        report.tests.push(TestResult {
                            name: name.to_string(),
                            outcome,
                        });
                    }
                    None => report.unfinished = Some(name.to_string()),
                }
            } else if let Some(name) = started_test(line) {
                report.unfinished = Some(name.to_string());
            }
        }
        report
    }

    pub fn failed_tests(&self) -> impl Iterator<Item = &TestResult> {
        self.tests
            .iter()
            .filter(|test| matches!(test.outcome, TestOutcome::Failed(_)))
    }

    /// The closing line, or when there is none (a panic or hang cut the run short)
    /// what the test lines so far add up to.
    pub fn summary_or_count(&self) -> Summary {
        self.summary.unwrap_or_else(|| {
            let count = |wanted: fn(&TestOutcome) -> bool| {
                let n = self
                    .tests
                    .iter()
                    .filter(|test| wanted(&test.outcome))
                    .count();
                u32::try_from(n).unwrap_or(u32::MAX)
            };
            Summary {
                passed: count(|outcome| *outcome == TestOutcome::Ok),
                failed: count(|outcome| matches!(outcome, TestOutcome::Failed(_))),
                skipped: count(|outcome| matches!(outcome, TestOutcome::Ignored(_))),
            }
        })
    }

    pub fn passed_count(&self) -> usize {
        self.tests
            .iter()
            .filter(|test| test.outcome == TestOutcome::Ok)
            .count()
    }
}

/// `test NAME ...` with nothing after it yet: the kernel is inside that test.
fn started_test(text: &str) -> Option<&str> {
    let rest = text.trim_end().strip_prefix("test ")?;
    let name = rest.strip_suffix("...")?.trim_end();
    (!name.is_empty()).then_some(name)
}

fn parse_verdict(verdict: &str) -> Option<TestOutcome> {
    let verdict = verdict.trim();
    if verdict == "ok" || verdict.starts_with("ok ") {
        return Some(TestOutcome::Ok);
    }
    let reason = |rest: &str| rest.trim_start_matches([':', ',']).trim().to_string();
    for (word, outcome) in [
        ("FAILED", TestOutcome::Failed as fn(String) -> TestOutcome),
        ("ignored", TestOutcome::Ignored),
    ] {
        if let Some(rest) = verdict.strip_prefix(word)
            && (rest.is_empty() || rest.starts_with([':', ',', ' ']))
        {
            return Some(outcome(reason(rest)));
        }
    }
    None
}

fn parse_announcement(line: &str) -> Option<u32> {
    let count = line.strip_prefix("running ")?;
    let count = count
        .strip_suffix(" tests")
        .or_else(|| count.strip_suffix(" test"))?;
    count.parse().ok()
}

/// `N passed, M failed`, possibly followed by `, K skipped` (or other clauses).
fn parse_summary(line: &str) -> Option<Summary> {
    let (passed, rest) = line.split_once(" passed, ")?;
    let (failed, rest) = rest.split_once(" failed")?;
    if !(rest.is_empty() || rest.starts_with([',', ' '])) {
        return None;
    }
    let skipped = rest
        .strip_prefix(", ")
        .and_then(|rest| rest.strip_suffix(" skipped"))
        .and_then(|count| count.parse().ok())
        .unwrap_or(0);
    Some(Summary {
        passed: passed.parse().ok()?,
        failed: failed.parse().ok()?,
        skipped,
    })
}

fn parse_bench(line: &str) -> Option<BenchSample> {
    let mut words = line.strip_prefix("bench ")?.split_whitespace();
    let (name, value, unit) = (words.next()?, words.next()?, words.next()?);
    if words.next().is_some() {
        return None;
    }
    Some(BenchSample {
        name: name.to_string(),
        value: value.parse().ok()?,
        unit: unit.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(passed: u32, failed: u32, skipped: u32) -> Summary {
        Summary {
            passed,
            failed,
            skipped,
        }
    }

    #[test]
    fn list_mode_names_every_test_in_order() {
        let report = Report::parse("boot noise\nlisted a::one\nlisted b::two\n2 listed\n");
        assert_eq!(report.listed, ["a::one", "b::two"]);
        assert!(report.tests.is_empty() && report.summary.is_none());
    }

    #[test]
    fn a_passing_run() {
        let log = "boot: x86_64 q35\r\nrunning 3 tests\r\ntest alloc::boxes ... ok\r\n\
                   test pci::enumerate ... ok\r\ntest edu::dma_roundtrip ... ok\r\n3 passed, 0 failed\r\n";
        let report = Report::parse(log);
        assert_eq!(report.announced, Some(3));
        assert_eq!(report.summary, Some(summary(3, 0, 0)));
        assert_eq!(report.passed_count(), 3);
        assert_eq!(report.tests[1].name, "pci::enumerate");
        assert_eq!(report.panic, None);
        assert_eq!(report.unfinished, None);
    }

    #[test]
    fn failures_keep_their_reason() {
        let log = "running 2 tests\ntest a ... ok\ntest edu::too_big ... FAILED: expected Err(TooLarge), got Ok(())\n\
                   test b ... FAILED\n1 passed, 2 failed\n";
        let report = Report::parse(log);
        let failed: Vec<_> = report.failed_tests().collect();
        assert_eq!(failed.len(), 2);
        assert_eq!(failed[0].name, "edu::too_big");
        assert_eq!(
            failed[0].outcome,
            TestOutcome::Failed("expected Err(TooLarge), got Ok(())".into())
        );
        assert_eq!(failed[1].outcome, TestOutcome::Failed(String::new()));
        assert_eq!(report.summary, Some(summary(1, 2, 0)));
    }

    #[test]
    fn a_panic_inside_a_test_names_the_test() {
        let log = "running 2 tests\ntest a ... ok\ntest traps::breakpoint ... KERNEL PANIC: at kernel/src/x.rs:3:5: boom\n";
        let report = Report::parse(log);
        assert_eq!(
            report.panic.as_deref(),
            Some("at kernel/src/x.rs:3:5: boom")
        );
        assert_eq!(report.unfinished.as_deref(), Some("traps::breakpoint"));
        assert_eq!(report.summary, None);
        assert_eq!(report.tests.len(), 1);
        assert_eq!(report.summary_or_count(), summary(1, 0, 0));
    }

    #[test]
    fn a_panic_on_its_own_line_after_a_started_test() {
        let log = "test slow ...\nKERNEL PANIC: page fault at 0x0\n";
        let report = Report::parse(log);
        assert_eq!(report.panic.as_deref(), Some("page fault at 0x0"));
        assert_eq!(report.unfinished.as_deref(), Some("slow"));
    }

    #[test]
    fn only_the_first_panic_is_kept() {
        let report = Report::parse("KERNEL PANIC: first\nKERNEL PANIC: second\n");
        assert_eq!(report.panic.as_deref(), Some("first"));
    }

    #[test]
    fn summary_line_variants() {
        assert_eq!(
            parse_summary("0 passed, 0 failed"),
            Some(Summary::default())
        );
        assert_eq!(
            parse_summary("12 passed, 1 failed, 2 skipped"),
            Some(summary(12, 1, 2))
        );
        assert_eq!(parse_summary("x passed, 0 failed"), None);
        assert_eq!(parse_summary("1 passed, 0 failedx"), None);
        assert_eq!(parse_summary("test a ... ok"), None);
        assert_eq!(parse_summary("-1 passed, 0 failed"), None);
    }

    #[test]
    fn ignored_tests_keep_their_reason_and_count_as_skipped() {
        let log = "running 3 tests\ntest a ... ok\ntest vtd::fault ... ignored, not applicable: no VT-d\n\
                   test b ... ignored\n1 passed, 0 failed, 2 skipped\n";
        let report = Report::parse(log);
        assert_eq!(
            report.tests[1].outcome,
            TestOutcome::Ignored("not applicable: no VT-d".into())
        );
        assert_eq!(report.tests[2].outcome, TestOutcome::Ignored(String::new()));
        assert_eq!(report.summary, Some(summary(1, 0, 2)));
        assert_eq!(report.unfinished, None);
        assert_eq!(parse_verdict("ignoredly"), None);
    }

    #[test]
    fn the_last_summary_wins() {
        let report = Report::parse("1 passed, 0 failed\n2 passed, 1 failed\n");
        assert_eq!(report.summary, Some(summary(2, 1, 0)));
    }

    #[test]
    fn announcement_variants() {
        assert_eq!(parse_announcement("running 1 test"), Some(1));
        assert_eq!(parse_announcement("running 40 tests"), Some(40));
        assert_eq!(parse_announcement("running tests"), None);
    }

    #[test]
    fn ok_with_a_trailer_is_ok_but_other_words_are_not_verdicts() {
        assert_eq!(parse_verdict("ok (12 ms)"), Some(TestOutcome::Ok));
        assert_eq!(parse_verdict("okay"), None);
        assert_eq!(parse_verdict("skipping"), None);
        assert_eq!(parse_verdict("FAILEDX"), None);
        assert_eq!(
            parse_verdict("FAILED why"),
            Some(TestOutcome::Failed("why".into()))
        );
    }

    #[test]
    fn bench_lines() {
        let report =
            Report::parse("bench vtd::map_4k 812.5 ns\nbench bad 1\nbench x notanumber ns\n");
        assert_eq!(
            report.benches,
            vec![BenchSample {
                name: "vtd::map_4k".into(),
                value: 812.5,
                unit: "ns".into()
            }]
        );
    }

    #[test]
    fn noise_is_ignored() {
        let report = Report::parse("demo: edu at 00:04.0\ntesting the waters\n");
        assert_eq!(report, Report::default());
    }
}
