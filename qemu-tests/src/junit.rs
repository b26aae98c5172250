//! JUnit XML for CI systems: one `<testsuite>` per configuration, one
//! `<testcase>` per in-kernel test (`classname` = the configuration), the
//! tests the kernel skipped as `<skipped>`, and a `(boot)` case that fails
//! when the boot itself did (a panic, a hang, too few tests, a bad exit), so
//! that a configuration which never reached its tests still shows red.
//!
//! The format is the one GitLab, Jenkins and GitHub test reporters read
//! (the "JUnit XML" of Ant's `junitreport`); no per-test time is given, as
//! the kernel does not measure one.

use std::fmt::Write as _;
use std::time::Duration;

use crate::report::{TestOutcome, TestResult};

/// What one configuration's boot said, for its `<testsuite>`.
#[derive(Clone, Debug, Default)]
pub struct Suite {
    /// The configuration.
    pub name: String,
    /// How long the boot took.
    pub elapsed: Duration,
    /// Every test the kernel reported, in order.
    pub tests: Vec<TestResult>,
    /// Why the boot as a whole failed (empty: it passed).
    pub problems: Vec<String>,
    /// Where the serial log is.
    pub log: String,
}

impl Suite {
    fn failures(&self) -> usize {
        let failed = self
            .tests
            .iter()
            .filter(|test| matches!(test.outcome, TestOutcome::Failed(_)))
            .count();
        failed + usize::from(!self.problems.is_empty())
    }

    fn skipped(&self) -> usize {
        self.tests
            .iter()
            .filter(|test| matches!(test.outcome, TestOutcome::Ignored(_)))
            .count()
    }

    /// The test cases: the kernel's, and the boot's own.
    fn cases(&self) -> usize {
        self.tests.len() + 1
    }
}

/// The whole document for `suites`.
pub fn render(suites: &[Suite]) -> String {
    let total = |count: fn(&Suite) -> usize| suites.iter().map(count).sum::<usize>();
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        xml,
        "<testsuites name=\"qemu-tests\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{:.3}\">",
        total(Suite::cases),
        total(Suite::failures),
        total(Suite::skipped),
        suites.iter().map(|s| s.elapsed.as_secs_f64()).sum::<f64>()
    );
    for suite in suites {
        let name = escape(&suite.name);
        let _ = writeln!(
            xml,
            "  <testsuite name=\"{name}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\" time=\"{:.3}\">",
            suite.cases(),
            suite.failures(),
            suite.skipped(),
            suite.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            xml,
            "    <properties><property name=\"serial-log\" value=\"{}\"/></properties>",
            escape(&suite.log)
        );
        for test in &suite.tests {
            let case = format!(
                "    <testcase classname=\"{name}\" name=\"{}\"",
                escape(&test.name)
            );
            match &test.outcome {
                TestOutcome::Ok => {
                    let _ = writeln!(xml, "{case}/>");
                }
                TestOutcome::Failed(why) => {
                    let _ = writeln!(
                        xml,
                        "{case}><failure message=\"{}\"/></testcase>",
                        escape(why)
                    );
                }
                TestOutcome::Ignored(why) => {
                    let _ = writeln!(
                        xml,
                        "{case}><skipped message=\"{}\"/></testcase>",
                        escape(why)
                    );
                }
            }
        }
        let boot = format!("    <testcase classname=\"{name}\" name=\"(boot)\"");
        if suite.problems.is_empty() {
            let _ = writeln!(xml, "{boot}/>");
        } else {
            let _ = writeln!(
                xml,
                "{boot}><failure message=\"{}\">{}</failure></testcase>",
                escape(&suite.problems[0]),
                escape(&suite.problems.join("\n"))
            );
        }
        xml.push_str("  </testsuite>\n");
    }
    xml.push_str("</testsuites>\n");
    xml
}

/// `text` as XML attribute or element content: the five markup characters
/// escaped, and control characters other than tab and newline (which XML
/// 1.0 cannot carry at all) dropped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test(name: &str, outcome: TestOutcome) -> TestResult {
        TestResult {
            name: name.into(),
            outcome,
        }
    }

    #[test]
    fn one_case_per_test_and_one_for_the_boot() {
        let suites = [
            Suite {
                name: "vtd".into(),
                elapsed: Duration::from_millis(1500),
                tests: vec![
                    test("a::ok", TestOutcome::Ok),
                    test("a::bad", TestOutcome::Failed("got <1> & \"2\"".into())),
                    test("a::absent", TestOutcome::Ignored("no IOMMU".into())),
                ],
                problems: vec![],
                log: "target/qemu-logs/vtd.log".into(),
            },
            Suite {
                name: "amdvi".into(),
                elapsed: Duration::from_secs(180),
                tests: vec![],
                problems: vec!["timed out after 180 s\u{1b}[0m".into(), "no summary".into()],
                log: "l".into(),
            },
        ];
        let xml = render(&suites);
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"));
        assert!(xml.contains(
            "<testsuites name=\"qemu-tests\" tests=\"5\" failures=\"2\" skipped=\"1\" time=\"181.500\">"
        ));
        assert!(xml.contains(
            "<testsuite name=\"vtd\" tests=\"4\" failures=\"1\" errors=\"0\" skipped=\"1\" time=\"1.500\">"
        ));
        assert!(xml.contains("<testcase classname=\"vtd\" name=\"a::ok\"/>"));
        assert!(xml.contains(
            "<testcase classname=\"vtd\" name=\"a::bad\"><failure message=\"got &lt;1&gt; &amp; &quot;2&quot;\"/></testcase>"
        ));
        assert!(xml.contains(
            "<testcase classname=\"vtd\" name=\"a::absent\"><skipped message=\"no IOMMU\"/></testcase>"
        ));
        assert!(xml.contains("<testcase classname=\"vtd\" name=\"(boot)\"/>"));
        // The escape character of a colour code is no XML: it is dropped.
        assert!(xml.contains(
            "<testcase classname=\"amdvi\" name=\"(boot)\"><failure message=\"timed out after 180 s[0m\">timed out after 180 s[0m\nno summary</failure></testcase>"
        ));
        assert_eq!(xml.matches("<testsuite ").count(), 2);
        assert!(xml.ends_with("</testsuites>\n"));
    }
}
