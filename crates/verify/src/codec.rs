//! A bounds-checked reader for the binary encodings: every read says what it was reading when the input ends.

use crate::Error;

pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    pub(crate) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Error> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(Error::Decode(format!("the input ends inside the {what} (at byte {})", self.at)));
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8, Error> {
        Ok(self.take(1, what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &str) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.take(2, what)?.try_into().expect("two bytes")))
    }

    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.take(8, what)?.try_into().expect("eight bytes")))
    }

    pub(crate) fn u128(&mut self, what: &str) -> Result<u128, Error> {
        Ok(u128::from_be_bytes(self.take(16, what)?.try_into().expect("sixteen bytes")))
    }

    pub(crate) fn hash(&mut self, what: &str) -> Result<[u8; 32], Error> {
        Ok(self.take(32, what)?.try_into().expect("thirty-two bytes"))
    }

    pub(crate) fn string_u8(&mut self, what: &str) -> Result<String, Error> {
        let len = usize::from(self.u8(what)?);
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Error::Decode(format!("the {what} is not UTF-8")))
    }

    pub(crate) fn position(&self) -> usize {
        self.at
    }

    pub(crate) fn finish(&self, what: &str) -> Result<(), Error> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(Error::Decode(format!("{} bytes follow the end of the {what}", self.bytes.len() - self.at)))
        }
    }
}
