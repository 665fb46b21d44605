//! The DATA reader: undoes dot-stuffing, finds the `CRLF.CRLF` terminator
//! and enforces the size limit without losing sync with the client.

/// What the decoder reserves up front: the session's read buffer size.
const INITIAL_CAPACITY: usize = super::READ_BUFFER;

/// Incremental DATA decoder. Feed it bytes as they arrive; it reports how
/// many it consumed and whether the terminator was reached.
#[derive(Debug)]
pub struct DataDecoder {
    state: State,
    max: usize,
    out: Vec<u8>,
    overflow: bool,
    bare_dot: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line.
    LineStart,
    /// Saw a `.` at the start of a line (removed).
    Dot,
    /// Saw `.` `CR` at the start of a line.
    DotCr,
    /// Inside a line.
    Middle,
    /// Saw `CR` inside a line.
    Cr,
    /// Saw a bare `LF` (not preceded by `CR`).
    Lf,
}

impl DataDecoder {
    /// A decoder keeping at most `max` bytes of message.
    pub fn new(max: usize) -> DataDecoder {
        DataDecoder {
            state: State::LineStart,
            max,
            // Most messages fit; bigger ones grow from here.
            out: Vec::with_capacity(max.min(INITIAL_CAPACITY)),
            overflow: false,
            bare_dot: false,
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        if self.overflow {
            return;
        }
        if self.out.len() + bytes.len() > self.max {
            self.overflow = true;
            self.out = Vec::new();
        } else {
            self.out.extend_from_slice(bytes);
        }
    }

    /// Consume bytes from `input`. Returns `(consumed, done)`; when `done`,
    /// the bytes after `consumed` belong to the next command.
    pub fn feed(&mut self, input: &[u8]) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Middle => {
                    // The previous byte was neither CR nor LF. Everything up
                    // to the next `.` that follows a CR or LF is copied as it
                    // is; the state after it follows from its last bytes.
                    let rest = &input[i..];
                    let cut = memchr::memchr_iter(b'.', rest)
                        .find(|&j| j > 0 && matches!(rest[j - 1], b'\r' | b'\n'))
                        .unwrap_or(rest.len());
                    let run = &rest[..cut];
                    self.emit(run);
                    i += cut;
                    self.state = match run {
                        [.., b'\r', b'\n'] => State::LineStart,
                        [.., b'\n'] => State::Lf,
                        [.., b'\r'] => State::Cr,
                        _ => State::Middle,
                    };
                }
                State::LineStart => {
                    let b = input[i];
                    i += 1;
                    match b {
                        b'.' => self.state = State::Dot,
                        b'\r' => {
                            self.emit(b"\r");
                            self.state = State::Cr;
                        }
                        b'\n' => {
                            self.emit(b"\n");
                            self.state = State::Lf;
                        }
                        _ => {
                            self.emit(&[b]);
                            self.state = State::Middle;
                        }
                    }
                }
                State::Dot => {
                    let b = input[i];
                    i += 1;
                    match b {
                        b'\r' => self.state = State::DotCr,
                        b'\n' => {
                            self.emit(b"\n");
                            self.state = State::Lf;
                        }
                        _ => {
                            self.emit(&[b]);
                            self.state = State::Middle;
                        }
                    }
                }
                State::DotCr => {
                    let b = input[i];
                    i += 1;
                    if b == b'\n' {
                        self.state = State::LineStart;
                        return (i, true);
                    }
                    // ".\rX": the dot was stuffing; keep the CR and go on.
                    self.emit(b"\r");
                    self.state = State::Cr;
                    i -= 1;
                }
                State::Cr | State::Lf => {
                    let b = input[i];
                    i += 1;
                    self.emit(&[b]);
                    self.state = match (self.state, b) {
                        (State::Cr, b'\n') => State::LineStart,
                        (_, b'\r') => State::Cr,
                        (_, b'\n') => State::Lf,
                        (_, b'.') => {
                            self.bare_dot = true;
                            State::Middle
                        }
                        _ => State::Middle,
                    };
                }
            }
        }
        (i, false)
    }

    /// The previous line-at-a-time decoder, the reference for `feed`.
    #[cfg(test)]
    fn feed_reference(&mut self, input: &[u8]) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Middle => {
                    let rest = &input[i..];
                    match rest.iter().position(|&b| b == b'\r' || b == b'\n') {
                        Some(p) => {
                            self.emit(&rest[..=p]);
                            i += p + 1;
                            self.state = if rest[p] == b'\r' {
                                State::Cr
                            } else {
                                State::Lf
                            };
                        }
                        None => {
                            self.emit(rest);
                            i = input.len();
                        }
                    }
                }
                State::LineStart => {
                    let b = input[i];
                    i += 1;
                    match b {
                        b'.' => self.state = State::Dot,
                        b'\r' => {
                            self.emit(b"\r");
                            self.state = State::Cr;
                        }
                        b'\n' => {
                            self.emit(b"\n");
                            self.state = State::Lf;
                        }
                        _ => {
                            self.emit(&[b]);
                            self.state = State::Middle;
                        }
                    }
                }
                State::Dot => {
                    let b = input[i];
                    i += 1;
                    match b {
                        b'\r' => self.state = State::DotCr,
                        b'\n' => {
                            self.emit(b"\n");
                            self.state = State::Lf;
                        }
                        _ => {
                            self.emit(&[b]);
                            self.state = State::Middle;
                        }
                    }
                }
                State::DotCr => {
                    let b = input[i];
                    i += 1;
                    if b == b'\n' {
                        self.state = State::LineStart;
                        return (i, true);
                    }
                    // ".\rX": the dot was stuffing; keep the CR and go on.
                    self.emit(b"\r");
                    self.state = State::Cr;
                    i -= 1;
                }
                State::Cr | State::Lf => {
                    let b = input[i];
                    i += 1;
                    self.emit(&[b]);
                    self.state = match (self.state, b) {
                        (State::Cr, b'\n') => State::LineStart,
                        (_, b'\r') => State::Cr,
                        (_, b'\n') => State::Lf,
                        (_, b'.') => {
                            self.bare_dot = true;
                            State::Middle
                        }
                        _ => State::Middle,
                    };
                }
            }
        }
        (i, false)
    }

    /// True when the message exceeded the size limit (its bytes were
    /// dropped, the terminator is still tracked).
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// True when a `.` followed a bare CR or LF: a next hop that takes a
    /// bare line ending for CRLF could see an end of data there (SMTP
    /// smuggling), so such messages are refused.
    pub fn bare_dot(&self) -> bool {
        self.bare_dot
    }

    /// The decoded message (empty after an overflow).
    pub fn into_message(self) -> Vec<u8> {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(wire: &[u8], piece: usize) -> (Vec<u8>, usize) {
        let mut d = DataDecoder::new(1 << 20);
        let mut pos = 0;
        while pos < wire.len() {
            let end = (pos + piece).min(wire.len());
            let (n, done) = d.feed(&wire[pos..end]);
            pos += n;
            if done {
                return (d.into_message(), pos);
            }
        }
        panic!("no terminator");
    }

    #[test]
    fn unstuffs_and_stops_at_terminator_in_any_split() {
        let wire = b"a\r\n..b\r\n.\r\r\n\r\n.x\r\n.\r\nMAIL FROM:<>\r\n";
        for piece in 1..wire.len() {
            let (msg, used) = decode_in_pieces(wire, piece);
            assert_eq!(msg, b"a\r\n.b\r\n\r\r\n\r\nx\r\n", "piece {piece}");
            assert_eq!(&wire[used..], b"MAIL FROM:<>\r\n");
        }
    }

    #[test]
    fn flags_a_dot_after_a_bare_line_ending_in_any_split() {
        for wire in [
            &b"a\n.\r\nb\r\n.\r\n"[..],
            b"a\r.\rb\r\n.\r\n",
            b"a\n.\nb\r\n.\r\n",
            b"a\r\n\n.b\r\n.\r\n",
        ] {
            for piece in 1..wire.len() {
                let mut d = DataDecoder::new(1 << 20);
                let mut pos = 0;
                loop {
                    let end = (pos + piece).min(wire.len());
                    let (n, done) = d.feed(&wire[pos..end]);
                    pos += n;
                    if done {
                        break;
                    }
                }
                assert!(d.bare_dot(), "{wire:?} piece {piece}");
                assert_eq!(d.into_message(), wire[..wire.len() - 3].to_vec());
            }
        }
        let mut d = DataDecoder::new(1 << 20);
        d.feed(b"a\nb\rc\r\n..d\r\n.\r\n");
        assert!(!d.bare_dot());
    }

    #[test]
    fn empty_message_and_overflow() {
        let (msg, used) = decode_in_pieces(b".\r\n", 3);
        assert!(msg.is_empty());
        assert_eq!(used, 3);
        let mut d = DataDecoder::new(4);
        let (n, done) = d.feed(b"12345\r\n.\r\nQUIT\r\n");
        assert!(done);
        assert_eq!(n, 10);
        assert!(d.overflowed());
    }

    #[test]
    fn matches_the_line_at_a_time_reference_on_random_input() {
        let mut rnd = crate::testutil::xorshift(0x9e37_79b9_7f4a_7c15u64);
        let alphabet = b"ab.\r\n";
        for _ in 0..3000 {
            let len = (rnd() % 60) as usize;
            let mut wire: Vec<u8> = (0..len)
                .map(|_| alphabet[(rnd() % alphabet.len() as u64) as usize])
                .collect();
            wire.extend_from_slice(b"\r\n.\r\nNEXT");
            let piece = 1 + (rnd() % 16) as usize;
            let max = if rnd() % 5 == 0 { 8 } else { 1 << 20 };
            let (mut fast, mut slow) = (DataDecoder::new(max), DataDecoder::new(max));
            let (mut pf, mut ps) = (0, 0);
            let (mut df, mut ds) = (false, false);
            while !df && pf < wire.len() {
                let (n, d) = fast.feed(&wire[pf..(pf + piece).min(wire.len())]);
                pf += n;
                df = d;
            }
            while !ds && ps < wire.len() {
                let (n, d) = slow.feed_reference(&wire[ps..(ps + piece).min(wire.len())]);
                ps += n;
                ds = d;
            }
            assert_eq!((pf, df), (ps, ds), "{wire:?}");
            assert_eq!(fast.bare_dot(), slow.bare_dot(), "{wire:?}");
            assert_eq!(fast.overflowed(), slow.overflowed(), "{wire:?}");
            assert_eq!(fast.into_message(), slow.into_message(), "{wire:?}");
        }
    }
}
