//! Reading server-sent events from bytes as they arrive: the `data` of each
//! event, which is all a chat-completions stream uses.
//!
//! Lines end with `\n` (a `\r` before it is dropped); a blank line ends an
//! event; `data:` lines add to its data (joined by `\n`, one space after the
//! colon dropped); comments (`:` first) and other fields (`event`, `id`,
//! `retry`) are skipped.

/// The longest line taken: anything longer is not a chat-completions stream.
pub(super) const MAX_LINE: usize = 1024 * 1024;

/// Why the bytes are not server-sent events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SseError {
    /// A line ran past [`MAX_LINE`] bytes.
    #[error("a line is longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// A line is not UTF-8.
    #[error("a line is not UTF-8")]
    NotUtf8,
}

/// Splits a byte stream into events.
#[derive(Debug, Default)]
pub(super) struct SseDecoder {
    /// Bytes of a line not ended yet.
    line: Vec<u8>,
    /// The data of the event being read, if it has a `data` line yet.
    data: Option<String>,
}

impl SseDecoder {
    /// Takes the next bytes; returns the data of every event they complete.
    pub(super) fn feed(&mut self, mut bytes: &[u8]) -> Result<Vec<String>, SseError> {
        let mut events = Vec::new();
        while let Some(end) = bytes.iter().position(|b| *b == b'\n') {
            self.take(&bytes[..end])?;
            let line = std::mem::take(&mut self.line);
            if let Some(data) = self.line_done(&line)? {
                events.push(data);
            }
            bytes = &bytes[end + 1..];
        }
        self.take(bytes)?;
        Ok(events)
    }

    /// The data of an event the stream ended in without its blank line.
    pub(super) fn finish(&mut self) -> Result<Option<String>, SseError> {
        let line = std::mem::take(&mut self.line);
        if let Some(data) = self.line_done(&line)? {
            return Ok(Some(data));
        }
        Ok(self.data.take())
    }

    fn take(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > MAX_LINE {
            return Err(SseError::LineTooLong);
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    /// Reads one whole line; returns the event's data when it ends one.
    fn line_done(&mut self, line: &[u8]) -> Result<Option<String>, SseError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = std::str::from_utf8(line).map_err(|_| SseError::NotUtf8)?;
        if line.is_empty() {
            return Ok(self.data.take());
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        if field == "data" {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_reads_come_whole() {
        let mut decoder = SseDecoder::default();
        assert!(decoder.feed(b"data: {\"a\"").unwrap().is_empty());
        assert!(decoder.feed(b":1}\r").unwrap().is_empty());
        assert_eq!(
            decoder.feed(b"\n\r\ndata: x\n\n").unwrap(),
            [r#"{"a":1}"#, "x"]
        );
        assert_eq!(decoder.finish().unwrap(), None);
    }

    #[test]
    fn comments_and_other_fields_are_skipped_and_data_lines_join() {
        let mut decoder = SseDecoder::default();
        let stream = b": keep-alive\n\nevent: message\nid: 7\ndata:one\ndata:  two\n\n";
        assert_eq!(decoder.feed(stream).unwrap(), ["one\n two"]);
    }

    #[test]
    fn a_last_event_without_its_blank_line_is_kept() {
        let mut decoder = SseDecoder::default();
        assert!(decoder.feed(b"data: [DONE]").unwrap().is_empty());
        assert_eq!(decoder.finish().unwrap().as_deref(), Some("[DONE]"));
    }

    #[test]
    fn multibyte_characters_split_between_reads_survive() {
        let mut decoder = SseDecoder::default();
        let bytes = "data: héllo\n\n".as_bytes();
        let (first, rest) = bytes.split_at(8);
        assert!(decoder.feed(first).unwrap().is_empty());
        assert_eq!(decoder.feed(rest).unwrap(), ["héllo"]);
    }

    #[test]
    fn overlong_lines_and_invalid_utf8_are_errors() {
        let mut decoder = SseDecoder::default();
        let long = vec![b'x'; MAX_LINE + 1];
        assert_eq!(decoder.feed(&long), Err(SseError::LineTooLong));
        let mut decoder = SseDecoder::default();
        assert_eq!(decoder.feed(b"data: \xff\n"), Err(SseError::NotUtf8));
    }
}
