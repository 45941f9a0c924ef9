//! From a run's reads to the chunks live output publishes: whole lines
//! (a partial last line waits for its newline or the end of its run), lines
//! longer than a chunk split, invalid UTF-8 replaced, and dropped output
//! marked where it was cut.

use super::{Piece, PieceKind, note};
use warren_common::messages::MAX_LOG_CHUNK_BYTES;

/// What the publisher does after a piece.
pub(super) enum Next {
    /// Publish the chunks that are full; the rest waits (at most
    /// [`FLUSH_INTERVAL`]).
    Continue,
    /// Publish every complete line now.
    PublishLines,
    /// Publish everything and stop.
    Finish,
}

/// One message's text, and the output bytes it holds.
#[derive(Debug, PartialEq)]
pub(super) struct Chunk {
    pub(super) text: String,
    pub(super) bytes: u64,
}

/// Whole lines out of reads: holds a partial last line until its newline
/// (or the end of its run), splits lines longer than a chunk, replaces
/// invalid UTF-8, and marks dropped output.
#[derive(Debug, Default)]
pub(super) struct Assembler {
    /// Output not yet in a chunk.
    buf: Vec<u8>,
    /// End of the last complete line in `buf` (0: none).
    lines_end: usize,
    /// Bytes dropped before what comes next, to note there.
    gap: u64,
    /// After a gap: discarding the rest of the line it cut.
    skipping: bool,
    /// Bytes of chunks that could not be published, to note at the start of
    /// the next chunk.
    lost: u64,
    /// Bytes discarded here since the publisher last counted them.
    pub(super) discarded: u64,
}

impl Assembler {
    /// Adds what a sink handed over.
    pub(super) fn apply(&mut self, piece: Piece) -> Next {
        if piece.end_before {
            self.end_of_run();
        }
        if piece.dropped_before > 0 {
            self.gap(piece.dropped_before);
        }
        match piece.kind {
            PieceKind::Output(bytes) => {
                self.push(&bytes);
                Next::Continue
            }
            PieceKind::EndOfRun => {
                self.end_of_run();
                Next::PublishLines
            }
            PieceKind::Header(line) => {
                self.header(&line);
                Next::Continue
            }
            PieceKind::Finish => Next::Finish,
        }
    }

    /// Output as read.
    pub(super) fn push(&mut self, mut bytes: &[u8]) {
        if self.skipping {
            match bytes.iter().position(|b| *b == b'\n') {
                None => {
                    self.discard(bytes.len());
                    return;
                }
                Some(newline) => {
                    self.discard(newline + 1);
                    self.skipping = false;
                    bytes = &bytes[newline + 1..];
                }
            }
        }
        if bytes.is_empty() {
            return;
        }
        self.note_gap();
        self.append(bytes);
    }

    /// `dropped` bytes (counted already) are missing before what comes
    /// next: the line they cut is discarded on both sides, so that no line
    /// is made of two.
    pub(super) fn gap(&mut self, dropped: u64) {
        self.gap += dropped;
        let partial = self.buf.len() - self.lines_end;
        if partial > 0 {
            self.buf.truncate(self.lines_end);
            self.discard(partial);
        }
        self.skipping = true;
    }

    /// A run ended: its last line is complete.
    pub(super) fn end_of_run(&mut self) {
        self.skipping = false;
        if self.buf.len() > self.lines_end {
            self.append(b"\n");
        }
    }

    /// A line of the worker's own, between runs.
    pub(super) fn header(&mut self, line: &str) {
        self.end_of_run();
        self.note_gap();
        self.append(line.as_bytes());
        self.append(b"\n");
    }

    /// Nothing more comes: complete the last line, note what was dropped.
    pub(super) fn finish(&mut self) {
        self.end_of_run();
        self.note_gap();
        if self.buf.is_empty() && self.lost > 0 {
            let lost = std::mem::take(&mut self.lost);
            self.append(note(lost).as_bytes());
        }
    }

    /// A chunk of `bytes` output bytes could not be published.
    pub(super) fn lost(&mut self, bytes: u64) {
        self.lost += bytes;
    }

    fn discard(&mut self, bytes: usize) {
        self.gap += bytes as u64;
        self.discarded += bytes as u64;
    }

    fn note_gap(&mut self) {
        if self.gap > 0 {
            let gap = std::mem::take(&mut self.gap);
            self.append(note(gap).as_bytes());
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(bytes);
        if let Some(newline) = bytes.iter().rposition(|b| *b == b'\n') {
            self.lines_end = start + newline + 1;
        }
    }

    pub(super) fn has_lines(&self) -> bool {
        self.lines_end > 0 || self.buf.len() >= MAX_LOG_CHUNK_BYTES
    }

    /// Whether a chunk would be full (or a line is too long for one).
    pub(super) fn has_full_chunk(&self) -> bool {
        self.lines_end >= MAX_LOG_CHUNK_BYTES
            || self.buf.len() - self.lines_end >= MAX_LOG_CHUNK_BYTES
    }

    /// The next chunk: as many complete lines as fit, or a piece of a line
    /// too long for one chunk (ended with a newline), or nothing.
    pub(super) fn next_chunk(&mut self) -> Option<Chunk> {
        let region = if self.lines_end > 0 {
            self.lines_end
        } else if self.buf.len() >= MAX_LOG_CHUNK_BYTES {
            self.buf.len()
        } else {
            return None;
        };
        let note = match self.lost {
            0 => String::new(),
            lost => note(lost),
        };
        // Room for the newline that ends a split line.
        let limit = MAX_LOG_CHUNK_BYTES - note.len() - 1;
        let (mut text, mut used) = decode_prefix(&self.buf[..region], limit);
        if used == 0 {
            return None;
        }
        if used < region {
            match self.buf[..used].iter().rposition(|b| *b == b'\n') {
                // Whole lines only: the rest goes in the next chunk.
                Some(newline) => {
                    used = newline + 1;
                    let end = text.rfind('\n').map_or(text.len(), |end| end + 1);
                    text.truncate(end);
                }
                // One line longer than a chunk: split it (at its own
                // newline, if that is what did not fit).
                None => {
                    if self.buf.get(used) == Some(&b'\n') {
                        used += 1;
                    }
                    text.push('\n');
                }
            }
        }
        self.buf.drain(..used);
        self.lines_end = self.lines_end.saturating_sub(used);
        self.lost = 0;
        Some(Chunk {
            text: note + &text,
            bytes: used as u64,
        })
    }
}

/// The longest prefix of `raw` whose text (invalid UTF-8 replaced with
/// U+FFFD) fits in `limit` bytes, cut at a character: (text, bytes of `raw`
/// used). An incomplete character at the very end is replaced too: callers
/// pass regions that end with a newline, or that are cut before their end.
fn decode_prefix(raw: &[u8], limit: usize) -> (String, usize) {
    let mut text = String::with_capacity(limit.min(raw.len()));
    let mut used = 0;
    while used < raw.len() {
        let rest = &raw[used..];
        let (valid, invalid) = match std::str::from_utf8(rest) {
            Ok(all) => (all, None),
            Err(error) => {
                let valid = std::str::from_utf8(&rest[..error.valid_up_to()]).unwrap_or_default();
                let invalid = error.error_len().unwrap_or(rest.len() - valid.len());
                (valid, Some(invalid))
            }
        };
        let room = limit - text.len();
        if valid.len() > room {
            let mut cut = room;
            while !valid.is_char_boundary(cut) {
                cut -= 1;
            }
            text.push_str(&valid[..cut]);
            used += cut;
            break;
        }
        text.push_str(valid);
        used += valid.len();
        match invalid {
            None => break,
            Some(_) if limit - text.len() < char::REPLACEMENT_CHARACTER.len_utf8() => break,
            Some(invalid) => {
                text.push(char::REPLACEMENT_CHARACTER);
                used += invalid;
            }
        }
    }
    (text, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every chunk the assembler has, as when flushing.
    fn drain(chunks: &mut Assembler) -> Vec<String> {
        std::iter::from_fn(|| chunks.next_chunk())
            .map(|chunk| chunk.text)
            .collect()
    }

    #[test]
    fn only_whole_lines_go_out_and_a_partial_line_waits_for_its_newline() {
        let mut chunks = Assembler::default();
        chunks.push(b"one\ntw");
        assert_eq!(drain(&mut chunks), ["one\n"]);
        assert!(!chunks.has_lines());
        chunks.push(b"o\nthr");
        chunks.push(b"ee");
        assert_eq!(drain(&mut chunks), ["two\n"]);
        chunks.end_of_run();
        assert_eq!(drain(&mut chunks), ["three\n"]);
        chunks.finish();
        assert_eq!(drain(&mut chunks), Vec::<String>::new());
    }

    #[test]
    fn headers_come_between_runs_on_lines_of_their_own() {
        let mut chunks = Assembler::default();
        chunks.header("==> a.sh");
        chunks.push(b"A\nno newline");
        chunks.end_of_run();
        chunks.header("==> b.sh");
        chunks.push(b"B\n");
        assert_eq!(
            drain(&mut chunks).concat(),
            "==> a.sh\nA\nno newline\n==> b.sh\nB\n"
        );
    }

    #[test]
    fn chunks_hold_at_most_the_limit_and_cut_between_lines() {
        let mut chunks = Assembler::default();
        let line = format!("{}\n", "x".repeat(99));
        for _ in 0..2000 {
            chunks.push(line.as_bytes());
        }
        assert!(chunks.has_full_chunk());
        let texts = drain(&mut chunks);
        assert_eq!(texts.len(), 4, "200 000 bytes in chunks of 64 KiB");
        for text in &texts {
            assert!(text.len() <= MAX_LOG_CHUNK_BYTES);
            assert!(text.ends_with('\n'));
            assert!(text.lines().all(|l| l.len() == 99), "whole lines only");
        }
        assert_eq!(texts.concat(), line.repeat(2000));
    }

    #[test]
    fn a_line_longer_than_a_chunk_is_split() {
        let mut chunks = Assembler::default();
        let long = "é".repeat(MAX_LOG_CHUNK_BYTES); // two bytes each
        chunks.push(long.as_bytes());
        assert!(chunks.has_full_chunk(), "no need to wait for its newline");
        let first = chunks.next_chunk().unwrap();
        assert!(first.text.len() <= MAX_LOG_CHUNK_BYTES);
        assert!(first.text.ends_with("é\n"), "cut at a character");
        chunks.push(b"\n");
        let texts = drain(&mut chunks);
        let rejoined: String = std::iter::once(first.text)
            .chain(texts)
            .map(|t| t.trim_end_matches('\n').to_owned())
            .collect();
        assert_eq!(rejoined, long);
    }

    #[test]
    fn invalid_utf8_is_replaced_even_across_reads() {
        let mut chunks = Assembler::default();
        let e = "é".as_bytes();
        chunks.push(&[b'a', 0xff, b' ', e[0]]);
        chunks.push(&[e[1], b'\n', 0xc3]);
        chunks.end_of_run();
        assert_eq!(drain(&mut chunks).concat(), "a\u{fffd} é\n\u{fffd}\n");
    }

    #[test]
    fn invalid_utf8_cannot_make_a_chunk_too_large() {
        let mut chunks = Assembler::default();
        // Each byte becomes three.
        chunks.push(&vec![0xff; MAX_LOG_CHUNK_BYTES - 1]);
        chunks.push(b"\n");
        let texts = drain(&mut chunks);
        assert_eq!(texts.len(), 3);
        assert!(texts.iter().all(|t| t.len() <= MAX_LOG_CHUNK_BYTES));
    }

    #[test]
    fn a_gap_is_noted_where_the_output_goes_on_and_cut_lines_are_discarded() {
        let mut chunks = Assembler::default();
        let (before, after) = ("cut at the st", "rest of a cut line\n");
        chunks.push(format!("whole\n{before}").as_bytes());
        chunks.gap(100);
        chunks.push(format!("{after}next\n").as_bytes());
        let discarded = (before.len() + after.len()) as u64;
        assert_eq!(
            drain(&mut chunks).concat(),
            format!(
                "whole\n[warren: {} bytes of live output dropped]\nnext\n",
                100 + discarded
            )
        );
        assert_eq!(chunks.discarded, discarded);
    }

    #[test]
    fn a_gap_at_the_end_is_noted_at_the_finish() {
        let mut chunks = Assembler::default();
        chunks.push(b"a\n");
        chunks.gap(10);
        chunks.finish();
        assert_eq!(
            drain(&mut chunks).concat(),
            "a\n[warren: 10 bytes of live output dropped]\n"
        );
    }

    #[test]
    fn chunks_that_could_not_be_published_are_noted_in_the_next() {
        let mut chunks = Assembler::default();
        chunks.push(b"lost\n");
        let lost = chunks.next_chunk().unwrap();
        chunks.lost(lost.bytes);
        chunks.push(b"kept\n");
        assert_eq!(
            drain(&mut chunks),
            ["[warren: 5 bytes of live output dropped]\nkept\n"]
        );
        chunks.lost(5);
        chunks.finish();
        assert_eq!(
            drain(&mut chunks),
            ["[warren: 5 bytes of live output dropped]\n"]
        );
    }
}
