//! lib0's variable-length encoding, the framing of every y-websocket message: a
//! bounds-checked reader and the writer.

use super::ProtocolError;

/// A bounds-checked cursor over lib0-encoded bytes: every length is checked against what
/// is left, and no input makes it panic.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// A lib0 varuint: 7 bits per byte, least significant first, high bit = more follows.
    pub fn var(&mut self) -> Result<u64, ProtocolError> {
        let mut value: u64 = 0;
        for (i, &byte) in self.buf.iter().enumerate() {
            let shift = 7 * i as u32;
            if shift > 63 || (shift == 63 && byte & 0x7f > 1) {
                return Err(ProtocolError::VarintOverflow);
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                self.buf = &self.buf[i + 1..];
                return Ok(value);
            }
        }
        Err(ProtocolError::Truncated("varint"))
    }

    /// A lib0 varbuf: varuint length, then that many bytes.
    pub fn buf(&mut self) -> Result<&'a [u8], ProtocolError> {
        let len = self.var()?;
        if len > self.buf.len() as u64 {
            return Err(ProtocolError::Truncated("length exceeds frame"));
        }
        let (head, tail) = self.buf.split_at(len as usize);
        self.buf = tail;
        Ok(head)
    }
}

/// Appends a lib0 varuint.
pub fn write_var(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a lib0 varbuf: varuint length, then the bytes.
pub fn write_buf(out: &mut Vec<u8>, bytes: &[u8]) {
    write_var(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Short pseudo-random byte strings (xorshift from `seed`), for the decoders' "never
/// panics" sweeps.
#[cfg(test)]
pub(crate) fn random_frames(seed: u64) -> impl Iterator<Item = Vec<u8>> {
    let mut x = seed;
    (0..2000usize).map(move |len| {
        (0..len % 64)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_width() {
        for value in [0, 1, 0x7f, 0x80, 0x3fff, 0x4000, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            write_var(&mut out, value);
            let mut r = Reader::new(&out);
            assert_eq!(r.var(), Ok(value));
            assert!(r.is_empty(), "{value} left bytes behind");
        }
    }

    #[test]
    fn a_buffer_longer_than_what_is_left_is_truncation() {
        let mut out = Vec::new();
        write_buf(&mut out, b"hello");
        assert_eq!(Reader::new(&out).buf(), Ok(&b"hello"[..]));
        assert_eq!(
            Reader::new(&out[..4]).buf(),
            Err(ProtocolError::Truncated("length exceeds frame"))
        );
        assert_eq!(
            Reader::new(&[0x80]).var(),
            Err(ProtocolError::Truncated("varint"))
        );
    }
}
