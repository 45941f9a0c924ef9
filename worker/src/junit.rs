//! Reading the JUnit XML report a job's command wrote.
//!
//! The report is a file of the checkout ([`SuitePath`], relative to its
//! root) written by untrusted test code, so reading it is defensive: the
//! path is resolved and must stay inside the checkout (a symlink to
//! `/etc/shadow` or to a FIFO is not followed), the file must be a regular
//! file of at most [`MAX_REPORT_BYTES`], and at most [`MAX_TEST_CASES`]
//! test cases are kept. Nothing here fails a job: every problem becomes a
//! sentence for the result's `report_problem`, and the job's status stays
//! what the command's exit status made it.
//!
//! Both common shapes are read: `<testsuites>` around `<testsuite>`s
//! (pytest, Surefire, Jest) and a single `<testsuite>`. Each `<testcase
//! name classname time file?>` becomes a [`TestCase`]; a `<failure>`,
//! `<error>` or `<skipped>` child sets its status. quick-xml expands no
//! external entities, so a report cannot make the worker read other files.

use quick_xml::XmlVersion;
use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use warren_common::ids::SuitePath;
use warren_common::messages::{TestCase, TestStatus};

/// Largest report read, in bytes. Far above any real report (100 000 test
/// cases with long messages is ~50 MiB), and a bound on the memory a test
/// can make the worker use.
pub(crate) const MAX_REPORT_BYTES: u64 = 64 * 1024 * 1024;

/// Most test cases kept from one job. The result carries them all and must
/// stay under the broker's body limit.
pub(crate) const MAX_TEST_CASES: usize = 100_000;

/// Longest failure message kept, in characters: the first line of a
/// message says what failed; the output has the rest.
pub(crate) const MAX_MESSAGE_CHARS: usize = 1000;

/// Longest test name, class name or file kept, in characters: real ones
/// are far shorter; the bound keeps 100 000 of them within a result.
pub(crate) const MAX_NAME_CHARS: usize = 1000;

/// How much text of a `<failure>` is collected to find its first line, in
/// bytes: a failure's text can be a whole log.
const MESSAGE_SCAN_BYTES: usize = 16 * 1024;

/// What one report gave.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Report {
    /// Its test cases, in document order (at most [`MAX_TEST_CASES`]).
    pub tests: Vec<TestCase>,
    /// Why the report was not read, or not completely, for the result's
    /// `report_problem`; `None` when it was read whole.
    pub problem: Option<String>,
}

impl Report {
    fn problem(text: String) -> Self {
        Self {
            tests: Vec::new(),
            problem: Some(text),
        }
    }
}

/// Deletes the report at `report` in `checkout` if there is one, so that a
/// report from an earlier run (or committed to the repository) is not read
/// as this run's. Never deletes outside the checkout: a parent folder that
/// is a link leading out is left alone. Blocking.
pub(crate) fn remove_stale(checkout: &Path, report: &SuitePath) -> io::Result<()> {
    let Some(name) = Path::new(report.as_str()).file_name() else {
        return Ok(());
    };
    let parent = checkout.join(report.as_str());
    let Some(parent) = parent.parent() else {
        return Ok(());
    };
    let (root, parent) = match (checkout.canonicalize(), parent.canonicalize()) {
        (Ok(root), Ok(parent)) => (root, parent),
        // No such folder: no stale report either.
        (_, Err(error)) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        (Err(error), _) | (_, Err(error)) => return Err(error),
    };
    if !parent.starts_with(&root) {
        return Ok(());
    }
    let path = parent.join(name);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if !meta.is_dir() => std::fs::remove_file(&path),
        Ok(_) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// Reads and parses the report at `report` in `checkout`. Blocking: call
/// it from `spawn_blocking`.
pub(crate) fn read(checkout: &Path, report: &SuitePath) -> Report {
    let bytes = match read_bytes(checkout, report) {
        Ok(bytes) => bytes,
        Err(problem) => return Report::problem(problem),
    };
    match parse(&bytes) {
        Ok(parsed) => Report {
            problem: parsed.truncated.then(|| {
                format!(
                    "JUnit report {report} has more than {MAX_TEST_CASES} test cases; \
                     only the first {MAX_TEST_CASES} are reported"
                )
            }),
            tests: parsed.tests,
        },
        Err(ParseError::NotXml(reason)) => {
            Report::problem(format!("JUnit report {report} is not valid XML: {reason}"))
        }
        Err(ParseError::NotJunit(reason)) => Report::problem(format!(
            "JUnit report {report} is not a JUnit report: {reason}"
        )),
    }
}

/// The report's bytes, or the sentence that says why they cannot be had.
fn read_bytes(checkout: &Path, report: &SuitePath) -> Result<Vec<u8>, String> {
    let root = checkout
        .canonicalize()
        .map_err(|e| format!("JUnit report {report} cannot be read: the checkout: {e}"))?;
    let path = match checkout.join(report.as_str()).canonicalize() {
        Ok(path) => path,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(format!(
                "JUnit report {report} was not written by the command"
            ));
        }
        Err(error) => return Err(format!("JUnit report {report} cannot be read: {error}")),
    };
    if !path.starts_with(&root) {
        return Err(format!(
            "JUnit report {report} leads outside the checkout (a symbolic link?); it was not read"
        ));
    }
    let file = open_regular(&path).map_err(|e| format!("JUnit report {report} {e}"))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or_default();
    let too_large = |size: u64| {
        format!(
            "JUnit report {report} is {size} bytes, more than the {} MiB a worker reads; \
             it was not read",
            MAX_REPORT_BYTES / (1024 * 1024)
        )
    };
    if size > MAX_REPORT_BYTES {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or_default());
    // One byte more than the limit: a file that grows while it is read is
    // still caught.
    file.take(MAX_REPORT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("JUnit report {report} cannot be read: {e}"))?;
    if bytes.len() as u64 > MAX_REPORT_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Opens `path` (already resolved) only if it is a regular file. The flags
/// make a FIFO open without waiting for a writer, and refuse a link that
/// replaced the file since it was resolved.
fn open_regular(path: &Path) -> Result<File, String> {
    let flags = nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_NOFOLLOW;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
        .map_err(|e| format!("cannot be read: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot be read: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file; it was not read".into());
    }
    Ok(file)
}

/// A report that parsed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Parsed {
    /// At most [`MAX_TEST_CASES`] test cases.
    pub tests: Vec<TestCase>,
    /// Whether test cases beyond [`MAX_TEST_CASES`] were left out.
    pub truncated: bool,
}

/// Why a report could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParseError {
    /// Not well-formed XML (cut short, mismatched tags, bad attributes…).
    #[error("not valid XML: {0}")]
    NotXml(String),
    /// XML, but not a JUnit report.
    #[error("not a JUnit report: {0}")]
    NotJunit(String),
}

/// A test case being read.
struct Open {
    case: TestCase,
    /// Depth of its `<testcase>` element.
    depth: usize,
    /// Collecting the text of a `<failure>`/`<error>` without a `message`
    /// attribute, down to this depth.
    collecting: Option<usize>,
    text: String,
}

/// Parses a JUnit XML report. Invalid UTF-8 is replaced (a report is for
/// people; one odd byte in a message must not lose the whole report).
pub(crate) fn parse(xml: &[u8]) -> Result<Parsed, ParseError> {
    let text = String::from_utf8_lossy(xml);
    let mut reader = Reader::from_str(&text);
    let mut tests = Vec::new();
    let mut open: Option<Open> = None;
    let mut depth = 0_usize;
    let mut seen_root = false;
    let not_xml = |reader: &Reader<&[u8]>, error: &dyn std::fmt::Display| {
        ParseError::NotXml(format!("{error} (at byte {})", reader.error_position()))
    };
    loop {
        let event = reader.read_event().map_err(|e| not_xml(&reader, &e))?;
        match event {
            Event::Start(element) if !seen_root => {
                check_root(&element)?;
                seen_root = true;
                depth += 1;
            }
            Event::Empty(element) if !seen_root => {
                check_root(&element)?;
                seen_root = true;
            }
            Event::Start(element) => {
                depth += 1;
                start_element(&element, depth, false, &mut open, &mut tests)
                    .map_err(|e| not_xml(&reader, &e))?;
            }
            Event::Empty(element) => {
                start_element(&element, depth + 1, true, &mut open, &mut tests)
                    .map_err(|e| not_xml(&reader, &e))?;
            }
            Event::End(_) => {
                if let Some(current) = open.as_mut() {
                    if current.collecting == Some(depth) {
                        current.collecting = None;
                        if current.case.message.is_none() {
                            current.case.message = first_line(&current.text);
                        }
                    }
                    if current.depth == depth
                        && let Some(done) = open.take()
                    {
                        tests.push(done.case);
                    }
                }
                depth = depth.saturating_sub(1);
            }
            Event::Text(text) => collect(&mut open, &text.xml10_content()),
            Event::CData(data) => collect(&mut open, &data.xml10_content()),
            Event::GeneralRef(reference) => {
                let resolved = match reference.resolve_char_ref() {
                    Ok(Some(c)) => Some(c.to_string()),
                    _ => {
                        quick_xml::escape::resolve_predefined_entity(&reference).map(str::to_owned)
                    }
                };
                if let Some(text) = resolved {
                    collect(&mut open, &text);
                }
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
        }
        if tests.len() > MAX_TEST_CASES {
            tests.truncate(MAX_TEST_CASES);
            return Ok(Parsed {
                tests,
                truncated: true,
            });
        }
    }
    if !seen_root {
        return Err(ParseError::NotXml(
            "there is no element (empty file?)".into(),
        ));
    }
    if depth > 0 {
        return Err(ParseError::NotXml(
            "it ends before its elements are closed (cut short?)".into(),
        ));
    }
    Ok(Parsed {
        tests,
        truncated: false,
    })
}

/// A report's root is `<testsuites>` or `<testsuite>`.
fn check_root(element: &BytesStart<'_>) -> Result<(), ParseError> {
    let name = element.local_name();
    let name = name.as_ref();
    if name == "testsuites" || name == "testsuite" {
        return Ok(());
    }
    Err(ParseError::NotJunit(format!(
        "its root element is <{name}>, not <testsuites> or <testsuite>"
    )))
}

/// An element starts at `depth` (`empty`: and ends at once).
fn start_element(
    element: &BytesStart<'_>,
    depth: usize,
    empty: bool,
    open: &mut Option<Open>,
    tests: &mut Vec<TestCase>,
) -> Result<(), quick_xml::Error> {
    let name = element.local_name();
    match (name.as_ref(), open.as_mut()) {
        ("testcase", None) => {
            let case = test_case(element)?;
            if empty {
                tests.push(case);
            } else {
                *open = Some(Open {
                    case,
                    depth,
                    collecting: None,
                    text: String::new(),
                });
            }
        }
        (kind @ ("failure" | "error" | "skipped"), Some(current)) if current.depth + 1 == depth => {
            let status = match kind {
                "failure" => TestStatus::Failed,
                "error" => TestStatus::Error,
                _ => TestStatus::Skipped,
            };
            let case = &mut current.case;
            // A failure or an error outranks a skip; the first of them wins.
            let first_problem = !matches!(case.status, TestStatus::Failed | TestStatus::Error);
            if status != TestStatus::Skipped && first_problem {
                case.status = status;
                case.message =
                    attribute(element, "message")?.and_then(|message| first_line(&message));
                if case.message.is_none() && !empty {
                    current.collecting = Some(depth);
                    current.text.clear();
                }
            } else if status == TestStatus::Skipped && case.status == TestStatus::Passed {
                case.status = status;
            }
        }
        _ => {}
    }
    Ok(())
}

fn test_case(element: &BytesStart<'_>) -> Result<TestCase, quick_xml::Error> {
    let text = |name| -> Result<String, quick_xml::Error> {
        Ok(attribute(element, name)?
            .map(|value| cap_chars(&value, MAX_NAME_CHARS))
            .unwrap_or_default())
    };
    let file =
        attribute(element, "file")?.map(|file| cap_chars(&normalise_file(&file), MAX_NAME_CHARS));
    Ok(TestCase {
        name: text("name")?,
        classname: text("classname")?,
        file,
        duration_ms: attribute(element, "time")?
            .map(|time| seconds_to_ms(&time))
            .unwrap_or_default(),
        status: TestStatus::Passed,
        message: None,
        flaky: false,
    })
}

/// An attribute's value, entities resolved; `None` when absent.
fn attribute(element: &BytesStart<'_>, name: &str) -> Result<Option<String>, quick_xml::Error> {
    for attribute in element.attributes() {
        let attribute = attribute?;
        if attribute.key.local_name().as_ref() == name {
            return Ok(Some(
                attribute
                    .normalized_value(XmlVersion::Implicit1_0)?
                    .into_owned(),
            ));
        }
    }
    Ok(None)
}

/// Adds text to the failure being collected, up to [`MESSAGE_SCAN_BYTES`].
fn collect(open: &mut Option<Open>, text: &str) {
    if let Some(current) = open.as_mut()
        && current.collecting.is_some()
        && current.text.len() < MESSAGE_SCAN_BYTES
    {
        let room = MESSAGE_SCAN_BYTES - current.text.len();
        current.text.push_str(cap_bytes(text, room));
    }
}

/// The first non-blank line of `text`, trimmed and capped; `None` if blank.
pub(crate) fn first_line(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(|line| cap_chars(line, MAX_MESSAGE_CHARS))
}

/// `time="1.5"` (seconds) in milliseconds. Reporters differ: a decimal
/// comma (`0,5`), thousands separators (`1,234.5`), nothing or garbage
/// (0), negative (0).
pub(crate) fn seconds_to_ms(time: &str) -> u64 {
    let time = time.trim();
    let normalised = if time.contains('.') {
        time.replace(',', "")
    } else {
        time.replace(',', ".")
    };
    match normalised.parse::<f64>() {
        // Saturating float-to-int conversion: huge values become u64::MAX.
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 => (seconds * 1000.0).round() as u64,
        _ => 0,
    }
}

/// A report's `file` attribute as a suite path would write it: without a
/// leading `./`.
pub(crate) fn normalise_file(file: &str) -> String {
    let mut file = file.trim();
    while let Some(rest) = file.strip_prefix("./") {
        file = rest;
    }
    file.to_owned()
}

fn cap_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

fn cap_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(name: &str, status: TestStatus) -> (String, TestStatus) {
        (name.to_owned(), status)
    }

    fn summary(parsed: &Parsed) -> Vec<(String, TestStatus)> {
        parsed
            .tests
            .iter()
            .map(|t| (t.name.clone(), t.status))
            .collect()
    }

    #[test]
    fn testsuites_with_failures_errors_and_skips() {
        let xml = br#"<?xml version="1.0" encoding="utf-8"?>
<testsuites>
  <testsuite name="pytest" tests="4">
    <testcase classname="tests.test_a" name="test_ok" time="0.012" file="tests/test_a.py"/>
    <testcase classname="tests.test_a" name="test_bad" time="1.5" file="./tests/test_a.py">
      <failure message="assert 1 == 2">Traceback...
assert 1 == 2</failure>
      <system-out>noise</system-out>
    </testcase>
    <testcase classname="tests.test_b" name="test_boom" time="0,25">
      <error type="RuntimeError">

   RuntimeError: &lt;boom&gt; &amp; more
   second line</error>
    </testcase>
    <testcase classname="tests.test_b" name="test_later"><skipped message="not today"/></testcase>
  </testsuite>
</testsuites>"#;
        let parsed = parse(xml).unwrap();
        assert!(!parsed.truncated);
        assert_eq!(
            summary(&parsed),
            [
                case("test_ok", TestStatus::Passed),
                case("test_bad", TestStatus::Failed),
                case("test_boom", TestStatus::Error),
                case("test_later", TestStatus::Skipped),
            ]
        );
        let t = &parsed.tests;
        assert_eq!(t[0].classname, "tests.test_a");
        assert_eq!(t[0].file.as_deref(), Some("tests/test_a.py"));
        assert_eq!(t[0].duration_ms, 12);
        assert_eq!(t[1].duration_ms, 1500);
        assert_eq!(t[1].file.as_deref(), Some("tests/test_a.py"), "./ removed");
        assert_eq!(t[1].message.as_deref(), Some("assert 1 == 2"));
        assert_eq!(t[2].duration_ms, 250);
        assert_eq!(t[2].file, None);
        assert_eq!(t[2].message.as_deref(), Some("RuntimeError: <boom> & more"));
        assert_eq!(
            t[3].message, None,
            "only failures and errors have a message"
        );
        assert!(t.iter().all(|t| !t.flaky));
    }

    #[test]
    fn a_single_testsuite_is_a_report_too() {
        let xml = br#"<testsuite name="x"><testcase name="a" classname="C" time="2"/>
            <testcase name="b" classname="C"><failure><![CDATA[expected 1
got 2]]></failure></testcase></testsuite>"#;
        let parsed = parse(xml).unwrap();
        assert_eq!(
            summary(&parsed),
            [case("a", TestStatus::Passed), case("b", TestStatus::Failed)]
        );
        assert_eq!(parsed.tests[0].duration_ms, 2000);
        assert_eq!(parsed.tests[1].duration_ms, 0);
        assert_eq!(parsed.tests[1].message.as_deref(), Some("expected 1"));
    }

    #[test]
    fn times_in_the_forms_reporters_write_them() {
        for (time, ms) in [
            ("1", 1000),
            ("0.0004", 0),
            ("0.0006", 1),
            (" 2.5 ", 2500),
            ("0,5", 500),
            ("1,234.5", 1_234_500),
            ("", 0),
            ("soon", 0),
            ("-3", 0),
            ("NaN", 0),
            ("inf", 0),
            ("1e30", u64::MAX),
        ] {
            assert_eq!(seconds_to_ms(time), ms, "{time:?}");
        }
    }

    #[test]
    fn messages_are_first_lines_capped() {
        let long = "x".repeat(5000);
        let xml = format!(
            r#"<testsuite><testcase name="a"><failure message="{long}"/></testcase></testsuite>"#
        );
        let parsed = parse(xml.as_bytes()).unwrap();
        let message = parsed.tests[0].message.as_deref().unwrap();
        assert_eq!(
            message.chars().count(),
            MAX_MESSAGE_CHARS + 1,
            "with an ellipsis"
        );
        assert!(message.ends_with('…'));
    }

    #[test]
    fn malformed_reports_are_errors_not_panics() {
        for (xml, expected) in [
            (&b""[..], "no element"),
            (b"   ", "no element"),
            (b"not xml at all", "no element"),
            (b"<testsuite><testcase name=\"a\">", "cut short"),
            (b"<testsuite></testcase>", "not valid XML"),
            (
                b"<testsuite><testcase name=\"a\" name=\"b\"/></testsuite>",
                "not valid XML",
            ),
            (
                b"<testsuite><testcase name=a/></testsuite>",
                "not valid XML",
            ),
            (b"<html><body/></html>", "root element is <html>"),
        ] {
            let err = parse(xml).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{:?}: {err}",
                String::from_utf8_lossy(xml)
            );
        }
    }

    #[test]
    fn invalid_utf8_and_entities_do_not_lose_the_report() {
        let xml = b"<testsuite><testcase name=\"caf\xe9 &#233; &#x41;\"/></testsuite>";
        let parsed = parse(xml).unwrap();
        assert_eq!(parsed.tests[0].name, "caf\u{fffd} é A");
    }

    #[test]
    fn no_more_than_the_cap_of_test_cases() {
        let mut xml = String::from("<testsuites><testsuite>");
        for i in 0..=MAX_TEST_CASES {
            xml.push_str(&format!("<testcase name=\"t{i}\"/>"));
        }
        xml.push_str("</testsuite></testsuites>");
        let parsed = parse(xml.as_bytes()).unwrap();
        assert!(parsed.truncated);
        assert_eq!(parsed.tests.len(), MAX_TEST_CASES);
    }

    fn checkout_with(file: &str, contents: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
        dir
    }

    fn report(path: &str) -> SuitePath {
        SuitePath::parse(path).unwrap()
    }

    #[test]
    fn a_report_in_the_checkout_is_read() {
        let dir = checkout_with(
            "out/report.xml",
            b"<testsuite><testcase name=\"a\"/></testsuite>",
        );
        let read = read(dir.path(), &report("out/report.xml"));
        assert_eq!(read.problem, None);
        assert_eq!(read.tests.len(), 1);
    }

    #[test]
    fn a_missing_report_is_a_problem_not_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let read = read(dir.path(), &report("report.xml"));
        assert!(read.tests.is_empty());
        assert_eq!(
            read.problem.as_deref(),
            Some("JUnit report report.xml was not written by the command")
        );
    }

    #[test]
    fn a_malformed_report_is_a_problem_that_says_why() {
        let dir = checkout_with("report.xml", b"<testsuite><testcase name=\"a\">");
        let problem = read(dir.path(), &report("report.xml")).problem.unwrap();
        assert!(
            problem.starts_with("JUnit report report.xml is not valid XML: "),
            "{problem}"
        );
    }

    #[test]
    fn a_huge_report_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.xml");
        let file = File::create(&path).unwrap();
        // Sparse: no disk space used.
        file.set_len(MAX_REPORT_BYTES + 1).unwrap();
        let problem = read(dir.path(), &report("report.xml")).problem.unwrap();
        assert!(problem.contains("more than the 64 MiB"), "{problem}");
    }

    #[test]
    fn a_link_out_of_the_checkout_is_not_followed() {
        let outside = checkout_with(
            "secret.xml",
            b"<testsuite><testcase name=\"leak\"/></testsuite>",
        );
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret.xml"),
            dir.path().join("report.xml"),
        )
        .unwrap();
        let read_back = read(dir.path(), &report("report.xml"));
        assert!(read_back.tests.is_empty());
        let problem = read_back.problem.unwrap();
        assert!(problem.contains("leads outside the checkout"), "{problem}");

        // A linked folder leading out is refused the same way, and a stale
        // report behind it is not deleted.
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
        let problem = read(dir.path(), &report("out/secret.xml")).problem.unwrap();
        assert!(problem.contains("leads outside the checkout"), "{problem}");
        remove_stale(dir.path(), &report("out/secret.xml")).unwrap();
        assert!(outside.path().join("secret.xml").exists());

        // A link inside the checkout is fine.
        let inside = checkout_with("real.xml", b"<testsuite><testcase name=\"a\"/></testsuite>");
        std::os::unix::fs::symlink(
            inside.path().join("real.xml"),
            inside.path().join("report.xml"),
        )
        .unwrap();
        assert_eq!(read(inside.path(), &report("report.xml")).tests.len(), 1);
    }

    #[test]
    fn a_fifo_or_a_folder_is_not_a_report() {
        let dir = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(
            &dir.path().join("report.xml"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let problem = read(dir.path(), &report("report.xml")).problem.unwrap();
        assert!(problem.contains("not a regular file"), "{problem}");
        std::fs::create_dir(dir.path().join("dir.xml")).unwrap();
        let problem = read(dir.path(), &report("dir.xml")).problem.unwrap();
        assert!(problem.contains("not a regular file"), "{problem}");
    }

    #[test]
    fn a_stale_report_is_removed_before_a_run() {
        let dir = checkout_with("out/report.xml", b"old");
        remove_stale(dir.path(), &report("out/report.xml")).unwrap();
        assert!(!dir.path().join("out/report.xml").exists());
        // Nothing there, or no such folder: nothing to do.
        remove_stale(dir.path(), &report("out/report.xml")).unwrap();
        remove_stale(dir.path(), &report("nowhere/report.xml")).unwrap();
    }
}
