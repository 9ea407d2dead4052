//! Server-sent events as the relay reads them: whole events out of a byte stream, and the
//! workers' resumption marks ([`crate::api::resume::Mark`]) taken out of them.

use crate::api::resume::Mark;

/// Cuts a byte stream into whole events (each up to and including its blank line).
#[derive(Debug, Default)]
pub struct EventSplitter {
    pending: Vec<u8>,
}

impl EventSplitter {
    /// The events `chunk` completes; an unfinished tail stays for the next chunk.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Vec<u8>> {
        // A boundary can straddle the old tail and the chunk: rescan one byte of the tail.
        let mut scan = self.pending.len().saturating_sub(1);
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(at) = self.pending[scan..].windows(2).position(|w| w == b"\n\n") {
            let end = scan + at + 2;
            events.push(self.pending[start..end].to_vec());
            start = end;
            scan = end;
        }
        self.pending.drain(..start);
        events
    }
}

/// An event with its marks taken out.
#[derive(Debug, Default, PartialEq)]
pub struct Unmarked {
    /// What the client gets (empty when the event held nothing else).
    pub event: Vec<u8>,
    /// The event's mark, if it had one (several are merged).
    pub mark: Option<Mark>,
    /// Whether it is OpenAI's `data: [DONE]`.
    pub done: bool,
}

/// Takes the marks out of one whole event.
pub fn unmark(event: &[u8]) -> Unmarked {
    let mut out = Unmarked::default();
    let mut kept = 0;
    for line in event.split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let mark = std::str::from_utf8(line).ok().and_then(Mark::parse_line);
        match mark {
            Some(m) => merge(out.mark.get_or_insert_with(Mark::default), m),
            None => {
                out.done |= line.strip_prefix(b"data:").map(<[u8]>::trim_ascii) == Some(b"[DONE]");
                out.event.extend_from_slice(line);
                out.event.push(b'\n');
                kept += 1;
            }
        }
    }
    if kept > 0 {
        out.event.push(b'\n');
    }
    out
}

fn merge(into: &mut Mark, m: Mark) {
    into.tokens.extend(m.tokens);
    into.seed = into.seed.or(m.seed);
    into.id = into.id.take().or(m.id);
    into.created = into.created.or(m.created);
    into.end |= m.end;
    into.retry |= m.retry;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_whole_whatever_the_chunks() {
        let stream = b"data: a\n\n: keep\n\ndata: b\n: migserve {\"t\":[1]}\n\n";
        for cut in 1..stream.len() {
            let mut s = EventSplitter::default();
            let mut events = s.push(&stream[..cut]);
            events.extend(s.push(&stream[cut..]));
            assert_eq!(
                events,
                [
                    &b"data: a\n\n"[..],
                    b": keep\n\n",
                    b"data: b\n: migserve {\"t\":[1]}\n\n"
                ],
                "cut at {cut}"
            );
        }
        let mut s = EventSplitter::default();
        assert!(s.push(b"data: half").is_empty());
    }

    #[test]
    fn marks_are_taken_out_and_the_rest_kept() {
        let u = unmark(b"data: {\"x\":1}\n: migserve {\"t\":[4,5],\"seed\":3}\n\n");
        assert_eq!(u.event, b"data: {\"x\":1}\n\n");
        let mark = u.mark.expect("marked");
        assert_eq!((mark.tokens, mark.seed), (vec![4, 5], Some(3)));
        assert!(!u.done);
        let only = unmark(b": migserve {\"end\":true}\n\n");
        assert!(only.event.is_empty() && only.mark.is_some_and(|m| m.end));
        let plain = unmark(b": keep-alive\n\n");
        assert_eq!(
            (plain.event, plain.mark),
            (b": keep-alive\n\n".to_vec(), None)
        );
        assert!(unmark(b"data: [DONE]\n\n").done);
    }
}
