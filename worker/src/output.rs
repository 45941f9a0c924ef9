//! Capturing a command's output within a fixed budget.
//!
//! A test may print gigabytes; the result keeps the first half of the budget
//! and the last half (where the failure usually is), with a marker line in
//! between that says how much was left out. Memory never exceeds the budget,
//! whatever the command writes. A [`Transcript`] joins the outputs of a
//! job's several runs (one per file, reruns) within the same budget.

use std::collections::VecDeque;

/// Head and tail of a byte stream, at most `limit` bytes in all.
#[derive(Debug)]
pub(crate) struct OutputCapture {
    limit: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: u64,
}

/// What a command wrote, as it goes into a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CapturedOutput {
    /// Head, marker line and tail, with invalid UTF-8 replaced by U+FFFD.
    pub text: String,
    /// Whether bytes were left out.
    pub truncated: bool,
    /// How many bytes the command wrote in all.
    pub total_bytes: u64,
}

impl OutputCapture {
    /// An empty capture keeping at most `limit` bytes (half head, half tail).
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            head: Vec::new(),
            tail: VecDeque::new(),
            total: 0,
        }
    }

    fn head_limit(&self) -> usize {
        self.limit / 2
    }

    fn tail_limit(&self) -> usize {
        self.limit - self.head_limit()
    }

    /// Records `bytes`, the next part of the stream.
    pub(crate) fn push(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let room = self.head_limit().saturating_sub(self.head.len());
        if room > 0 {
            let taken = room.min(bytes.len());
            self.head.extend_from_slice(&bytes[..taken]);
            bytes = &bytes[taken..];
        }
        let tail_limit = self.tail_limit();
        if bytes.len() >= tail_limit {
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - tail_limit..]);
        } else {
            let overflow = (self.tail.len() + bytes.len()).saturating_sub(tail_limit);
            self.tail.drain(..overflow);
            self.tail.extend(bytes);
        }
    }

    /// The text for the result.
    pub(crate) fn finish(&self) -> CapturedOutput {
        let kept = (self.head.len() + self.tail.len()) as u64;
        let omitted = self.total - kept;
        let tail: Vec<u8> = self.tail.iter().copied().collect();
        let text = if omitted == 0 {
            let mut all = self.head.clone();
            all.extend_from_slice(&tail);
            String::from_utf8_lossy(&all).into_owned()
        } else {
            // Cut at character boundaries, so that the cut itself does not
            // show as replacement characters.
            let head = String::from_utf8_lossy(trim_incomplete_end(&self.head));
            let tail = String::from_utf8_lossy(trim_continuation_start(&tail));
            let newline = if head.is_empty() || head.ends_with('\n') {
                ""
            } else {
                "\n"
            };
            format!("{head}{newline}{}\n{tail}", marker(omitted, self.limit))
        };
        CapturedOutput {
            text,
            truncated: omitted > 0,
            total_bytes: self.total,
        }
    }
}

/// The line that replaces the omitted middle of an output.
fn marker(omitted: u64, limit: usize) -> String {
    format!(
        "[warren: {omitted} bytes omitted here; the output limit is {limit} bytes, head and tail kept]"
    )
}

/// Longest UTF-8 sequence, in bytes.
const MAX_UTF8_LEN: usize = 4;

/// `bytes` without an incomplete UTF-8 sequence at its end.
fn trim_incomplete_end(bytes: &[u8]) -> &[u8] {
    let start = bytes.len().saturating_sub(MAX_UTF8_LEN - 1);
    for cut in (start..bytes.len()).rev() {
        if let Err(error) = std::str::from_utf8(&bytes[cut..])
            && error.error_len().is_none()
            && error.valid_up_to() == 0
        {
            return &bytes[..cut];
        }
    }
    bytes
}

/// `bytes` without UTF-8 continuation bytes at its start (the end of a
/// character whose beginning was cut off).
fn trim_continuation_start(bytes: &[u8]) -> &[u8] {
    let skip = bytes
        .iter()
        .take(MAX_UTF8_LEN - 1)
        .take_while(|b| (**b & 0b1100_0000) == 0b1000_0000)
        .count();
    &bytes[skip..]
}

/// Shortens an already captured `text` to about `max_bytes`, head and tail
/// kept, for a result that would otherwise be too large to publish (JSON
/// escaping of control characters can make a body several times its text).
pub(crate) fn shrink(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_owned();
    }
    let floor = |mut i: usize| {
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let ceil = |mut i: usize| {
        while !text.is_char_boundary(i) {
            i += 1;
        }
        i
    };
    let head_end = floor(max_bytes / 2);
    let tail_start = ceil(text.len() - (max_bytes - max_bytes / 2));
    let omitted = (tail_start - head_end) as u64;
    format!(
        "{}\n{}\n{}",
        &text[..head_end],
        marker(omitted, max_bytes),
        &text[tail_start..]
    )
}

/// The output of every run of one job as one text: each run's captured
/// output after a header line, capped head + tail at the job's limit like a
/// single run's. A job of a single run without a header keeps that run's
/// output exactly as it was captured.
#[derive(Debug)]
pub(crate) struct Transcript {
    capture: OutputCapture,
    /// The only part so far, kept as it is until a second one arrives.
    single: Option<CapturedOutput>,
    parts: usize,
    /// Bytes the runs wrote (headers and notes not counted).
    run_bytes: u64,
    /// Whether a run's own capture left bytes out.
    run_truncated: bool,
    ends_with_newline: bool,
}

impl Transcript {
    /// An empty transcript keeping at most `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            capture: OutputCapture::new(limit),
            single: None,
            parts: 0,
            run_bytes: 0,
            run_truncated: false,
            ends_with_newline: true,
        }
    }

    /// Adds a line of the worker's own (a note for people), on a line of its own.
    pub(crate) fn note(&mut self, line: &str) {
        self.new_line();
        self.push_text(&format!("{line}\n"));
    }

    /// Adds one run's `output`, after `header` (a line, without its newline)
    /// when there is one.
    pub(crate) fn push_run(&mut self, header: Option<&str>, output: &CapturedOutput) {
        self.run_bytes += output.total_bytes;
        self.run_truncated |= output.truncated;
        match header {
            Some(header) => {
                self.new_line();
                self.push_text(&format!("==> {header}\n"));
                self.push_text(&output.text);
            }
            None if self.parts == 0 => {
                self.parts = 1;
                self.ends_with_newline = output.text.is_empty() || output.text.ends_with('\n');
                self.single = Some(output.clone());
            }
            None => self.push_text(&output.text),
        }
    }

    /// Ends the last line, so that what comes next starts a line.
    fn new_line(&mut self) {
        if !self.ends_with_newline {
            self.push_text("\n");
        }
    }

    fn push_text(&mut self, text: &str) {
        if let Some(single) = self.single.take() {
            self.capture.push(single.text.as_bytes());
        }
        if text.is_empty() {
            return;
        }
        self.capture.push(text.as_bytes());
        self.ends_with_newline = text.ends_with('\n');
        self.parts += 1;
    }

    /// The text for the result: `total_bytes` counts what the runs wrote,
    /// `truncated` says whether anything was left out anywhere.
    pub(crate) fn finish(&self) -> CapturedOutput {
        let mut output = match &self.single {
            Some(single) => single.clone(),
            None => self.capture.finish(),
        };
        output.truncated |= self.run_truncated;
        output.total_bytes = self.run_bytes;
        output
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(text: &str, total_bytes: u64, truncated: bool) -> CapturedOutput {
        CapturedOutput {
            text: text.into(),
            truncated,
            total_bytes,
        }
    }

    #[test]
    fn a_single_run_without_a_header_is_kept_as_it_was() {
        let mut transcript = Transcript::new(8);
        let run = captured("0123\n[warren: 90 bytes omitted…]\n6789", 100, true);
        transcript.push_run(None, &run);
        assert_eq!(transcript.finish(), run);
    }

    #[test]
    fn runs_follow_their_headers_and_bytes_add_up() {
        let mut transcript = Transcript::new(1024);
        transcript.push_run(Some("a.py (exit 0, 0.1 s)"), &captured("ok\n", 3, false));
        transcript.push_run(
            Some("b.py (exit 1, 0.2 s)"),
            &captured("no newline", 10, false),
        );
        transcript.push_run(
            Some("rerun 1 of 1: b.py (exit 0, 0.1 s)"),
            &captured("", 0, false),
        );
        let output = transcript.finish();
        assert_eq!(
            output.text,
            "==> a.py (exit 0, 0.1 s)\nok\n==> b.py (exit 1, 0.2 s)\nno newline\n\
             ==> rerun 1 of 1: b.py (exit 0, 0.1 s)\n"
        );
        assert_eq!(output.total_bytes, 13);
        assert!(!output.truncated);
    }

    #[test]
    fn many_runs_are_capped_head_and_tail_together() {
        let mut transcript = Transcript::new(200);
        transcript.push_run(None, &captured("first run\n", 10, false));
        for i in 0..50 {
            transcript.push_run(
                Some(&format!("run {i}")),
                &captured("xxxxxxxxxx\n", 11, false),
            );
        }
        let output = transcript.finish();
        assert!(output.truncated);
        assert_eq!(output.total_bytes, 10 + 50 * 11);
        assert!(
            output.text.starts_with("first run\n==> run 0\n"),
            "{}",
            output.text
        );
        assert!(
            output.text.ends_with("==> run 49\nxxxxxxxxxx\n"),
            "{}",
            output.text
        );
        assert!(output.text.len() < 200 + 150);
    }

    #[test]
    fn short_output_is_kept_whole() {
        let mut capture = OutputCapture::new(100);
        capture.push(b"hello ");
        capture.push(b"world\n");
        let output = capture.finish();
        assert_eq!(output.text, "hello world\n");
        assert!(!output.truncated);
        assert_eq!(output.total_bytes, 12);
    }

    #[test]
    fn output_at_the_limit_is_kept_whole() {
        let mut capture = OutputCapture::new(10);
        capture.push(b"0123456789");
        let output = capture.finish();
        assert_eq!(output.text, "0123456789");
        assert!(!output.truncated);
    }

    #[test]
    fn long_output_keeps_head_and_tail_with_a_marker() {
        let mut capture = OutputCapture::new(10);
        for chunk in [&b"abc"[..], b"defgh", b"ijklmnop", b"qrstuvwxyz"] {
            capture.push(chunk);
        }
        let output = capture.finish();
        assert!(output.truncated);
        assert_eq!(output.total_bytes, 26);
        let (head, rest) = output.text.split_once('\n').unwrap();
        let (marker, tail) = rest.split_once('\n').unwrap();
        assert_eq!(head, "abcde");
        assert_eq!(tail, "vwxyz");
        assert!(marker.contains("16 bytes omitted"), "{marker}");
        assert!(marker.contains("10 bytes"), "{marker}");
    }

    #[test]
    fn one_huge_chunk_keeps_its_own_head_and_tail() {
        let mut capture = OutputCapture::new(4);
        capture.push(b"0123456789");
        let output = capture.finish();
        assert!(output.text.starts_with("01\n") && output.text.ends_with("\n89"));
        assert!(output.text.contains("6 bytes omitted"));
    }

    #[test]
    fn invalid_utf8_is_replaced_and_cuts_do_not_split_characters() {
        let mut capture = OutputCapture::new(100);
        capture.push(b"ok \xff\xfe end");
        assert_eq!(capture.finish().text, "ok \u{fffd}\u{fffd} end");

        // "é" is two bytes; a head of 3 bytes would cut the second "é" in half.
        let mut capture = OutputCapture::new(6);
        capture.push("éééééééééé".as_bytes());
        let output = capture.finish();
        assert!(!output.text.contains('\u{fffd}'), "{:?}", output.text);
        assert!(output.text.starts_with("é\n"), "{:?}", output.text);
        assert!(output.text.ends_with("\né"), "{:?}", output.text);
    }

    #[test]
    fn a_flood_stays_within_the_cap() {
        let limit = 64 * 1024;
        let mut capture = OutputCapture::new(limit);
        let line = b"this line repeats forever and ever and ever\n";
        let chunk: Vec<u8> = line.iter().copied().cycle().take(64 * 1024).collect();
        // 48 MiB in 64 KiB writes, like a pipe delivers them.
        for _ in 0..(48 * 16) {
            capture.push(&chunk);
            assert!(capture.head.len() + capture.tail.len() <= limit);
            assert!(capture.head.capacity() + capture.tail.capacity() <= 4 * limit);
        }
        let output = capture.finish();
        assert_eq!(output.total_bytes, 48 * 1024 * 1024);
        assert!(output.truncated);
        assert!(output.text.len() <= limit + 200, "{}", output.text.len());
        assert!(output.text.starts_with("this line repeats"));
        assert!(
            output
                .text
                .contains(&format!("{} bytes omitted", 48 * 1024 * 1024 - limit))
        );
    }

    #[test]
    fn shrink_keeps_head_and_tail_on_character_boundaries() {
        assert_eq!(shrink("short", 10), "short");
        let text = "ééééé-middle-ééééé";
        let shrunk = shrink(text, 5);
        assert!(
            shrunk.starts_with("é\n") && shrunk.ends_with("\né"),
            "{shrunk}"
        );
        assert!(shrunk.contains("bytes omitted"));
    }
}
