//! A bounds-checked cursor over characteristic bytes and little-endian writers.
//!
//! Every read names the field it is reading so a short value becomes
//! [`DecodeError::Truncated`] with the field, offset and sizes; nothing here can panic on any
//! input.

use super::error::{DecodeError, EncodeError, Quirk};
use super::ieee11073::Float11073;

/// Reads little-endian fields from a byte slice, front to back.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader {
            rest: bytes,
            offset: 0,
        }
    }

    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Reads exactly `N` bytes.
    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        match self.rest.split_first_chunk::<N>() {
            Some((head, tail)) => {
                self.rest = tail;
                self.offset += N;
                Ok(*head)
            }
            None => Err(DecodeError::Truncated {
                field,
                offset: self.offset,
                needed: N,
                got: self.rest.len(),
            }),
        }
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        let [b] = self.array::<1>(field)?;
        Ok(b)
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array::<2>(field)?))
    }

    pub(crate) fn u24(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let [a, b, c] = self.array::<3>(field)?;
        Ok(u32::from_le_bytes([a, b, c, 0]))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array::<4>(field)?))
    }

    pub(crate) fn sfloat(&mut self, field: &'static str) -> Result<Float11073, DecodeError> {
        Ok(Float11073::from_sfloat_bits(self.u16(field)?))
    }

    /// A 32-bit IEEE-11073 FLOAT.
    pub(crate) fn float(&mut self, field: &'static str) -> Result<Float11073, DecodeError> {
        Ok(Float11073::from_float_bits(self.u32(field)?))
    }

    /// Reads exactly `n` bytes.
    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.rest.len() {
            return Err(DecodeError::Truncated {
                field,
                offset: self.offset,
                needed: n,
                got: self.rest.len(),
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        self.offset += n;
        Ok(head)
    }

    /// Reads everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let all = self.rest;
        self.offset += all.len();
        self.rest = &[];
        all
    }

    /// Ends a lenient read: left-over bytes become a [`Quirk::TrailingBytes`].
    pub(crate) fn finish(self, quirks: &mut Vec<Quirk>) {
        if !self.rest.is_empty() {
            quirks.push(Quirk::TrailingBytes {
                count: self.rest.len(),
            });
        }
    }

    /// Ends a strict read: left-over bytes are an error.
    pub(crate) fn finish_strict(self, after: &'static str) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                after,
                count: self.rest.len(),
            })
        }
    }
}

pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Writes the low 24 bits of `v`.
pub(crate) fn put_u24(out: &mut Vec<u8>, v: u32) {
    let [a, b, c, _] = v.to_le_bytes();
    out.extend_from_slice(&[a, b, c]);
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_float(
    out: &mut Vec<u8>,
    field: &'static str,
    v: &Float11073,
) -> Result<(), EncodeError> {
    let bits = v
        .to_float_bits()
        .map_err(|source| EncodeError::Float { field, source })?;
    put_u32(out, bits);
    Ok(())
}

pub(crate) fn put_sfloat(
    out: &mut Vec<u8>,
    field: &'static str,
    v: &Float11073,
) -> Result<(), EncodeError> {
    let bits = v
        .to_sfloat_bits()
        .map_err(|source| EncodeError::Float { field, source })?;
    put_u16(out, bits);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_names_field_offset_and_sizes() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u8("flags"), Ok(1));
        assert_eq!(
            r.u24("status"),
            Err(DecodeError::Truncated {
                field: "status",
                offset: 1,
                needed: 3,
                got: 2
            })
        );
        // A failed read consumes nothing.
        assert_eq!(r.u16("x"), Ok(0x0302));
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn trailing_bytes_become_a_quirk_or_an_error() {
        let mut quirks = Vec::new();
        Reader::new(&[1, 2]).finish(&mut quirks);
        assert_eq!(quirks, vec![Quirk::TrailingBytes { count: 2 }]);
        assert_eq!(
            Reader::new(&[1]).finish_strict("operand"),
            Err(DecodeError::TrailingBytes {
                after: "operand",
                count: 1
            })
        );
    }

    #[test]
    fn u24_round_trips() {
        let mut out = Vec::new();
        put_u24(&mut out, 0x0102_0304);
        assert_eq!(out, [0x04, 0x03, 0x02]);
        assert_eq!(Reader::new(&out).u24("x"), Ok(0x020304));
    }
}
