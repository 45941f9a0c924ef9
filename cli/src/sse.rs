//! Server-sent events, read line by line from a blocking body.
//!
//! The subset of the format (WHATWG HTML, "Server-sent events") the
//! dispatcher uses: `event:` and `data:` fields, several `data:` lines
//! joined with `\n`, comments (`:` lines, used as keep-alives) skipped,
//! `id:` and `retry:` ignored, a blank line ending each event. Lines end
//! with `\n` or `\r\n`.

use std::io::{self, BufRead, Read};

/// The longest line accepted, in bytes: a job's whole stored output (at
/// most `worker.output_limit`, 16 MiB) sent as one line still fits, and a
/// server that never sends a newline cannot fill the memory.
const MAX_LINE_BYTES: u64 = 32 * 1024 * 1024;

/// One event: its name (`message` when the server gave none) and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    pub name: String,
    pub data: String,
}

/// The events of a stream, in order; `None` at the end of the body (an
/// event not ended by a blank line is dropped, as the format says).
pub(crate) struct Events<R> {
    reader: R,
    line: Vec<u8>,
}

impl<R: BufRead> Events<R> {
    pub(crate) fn new(reader: R) -> Self {
        Self {
            reader,
            line: Vec::new(),
        }
    }

    /// The next line without its line ending; `None` at the end.
    fn next_line(&mut self) -> io::Result<Option<String>> {
        self.line.clear();
        let read = (&mut self.reader)
            .take(MAX_LINE_BYTES)
            .read_until(b'\n', &mut self.line)?;
        if read == 0 {
            return Ok(None);
        }
        if self.line.last() == Some(&b'\n') {
            self.line.pop();
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
        } else if read as u64 == MAX_LINE_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("an event-stream line is longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        Ok(Some(String::from_utf8_lossy(&self.line).into_owned()))
    }
}

impl<R: BufRead> Iterator for Events<R> {
    type Item = io::Result<Event>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut name: Option<String> = None;
        let mut data: Option<String> = None;
        loop {
            let line = match self.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => return None,
                Err(error) => return Some(Err(error)),
            };
            if line.is_empty() {
                if let Some(data) = data.take() {
                    let name = name.take().unwrap_or_else(|| "message".to_owned());
                    return Some(Ok(Event { name, data }));
                }
                name = None; // an event without data is not dispatched
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line.as_str(), ""),
            };
            match field {
                "event" => name = Some(value.to_owned()),
                "data" => match &mut data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => data = Some(value.to_owned()),
                },
                _ => {} // id, retry, and fields this reader has no use for
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(text: &str) -> Vec<Event> {
        Events::new(text.as_bytes())
            .collect::<io::Result<_>>()
            .unwrap()
    }

    fn event(name: &str, data: &str) -> Event {
        Event {
            name: name.into(),
            data: data.into(),
        }
    }

    #[test]
    fn reads_named_events_with_multi_line_data() {
        let text = "event: line\ndata: one\ndata: two\n\nevent: end\ndata: passed\n\n";
        assert_eq!(
            events(text),
            [event("line", "one\ntwo"), event("end", "passed")]
        );
    }

    #[test]
    fn skips_comments_and_ids_and_accepts_crlf_and_no_space() {
        let text = ": keep-alive\r\nid: 7\r\nevent:line\r\ndata:x\r\n\r\n";
        assert_eq!(events(text), [event("line", "x")]);
    }

    #[test]
    fn unnamed_events_are_messages_and_empty_data_lines_count() {
        assert_eq!(events("data\ndata: b\n\n"), [event("message", "\nb")]);
    }

    #[test]
    fn an_unfinished_event_at_the_end_is_dropped() {
        assert_eq!(events("event: line\ndata: half"), []);
    }

    #[test]
    fn keeps_leading_spaces_beyond_the_first() {
        assert_eq!(
            events("data:   indented\n\n"),
            [event("message", "  indented")]
        );
    }
}
