//! File headers and record framing, shared by journal segments and snapshots, and the
//! reader that tells a torn tail from damage.

use std::fmt;

/// Format version this build writes and reads.
pub const VERSION: u32 = 1;
pub const JOURNAL_MAGIC: [u8; 8] = *b"LLS-JNL\n";
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"LLS-SNP\n";
/// magic 8, version 4, reserved 4, epoch 8, base 8, CRC 4.
pub const HEADER_LEN: usize = 36;
/// len 4, payload CRC 4, header CRC 4.
pub const RECORD_HEADER: usize = 12;
/// Largest payload accepted.
pub const MAX_RECORD: usize = 16 << 20;

/// The header of a journal segment or a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    pub magic: [u8; 8],
    /// Random, chosen when a store is created and again at every reset; a journal
    /// segment belongs to the snapshot of the same epoch.
    pub epoch: u64,
    /// Journal: sequence number of its first record. Snapshot: of the state it holds.
    pub base: u64,
}

impl FileHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&self.magic);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[16..24].copy_from_slice(&self.epoch.to_le_bytes());
        h[24..32].copy_from_slice(&self.base.to_le_bytes());
        let crc = crc32fast::hash(&h[..32]);
        h[32..36].copy_from_slice(&crc.to_le_bytes());
        h
    }

    pub fn decode(data: &[u8], magic: [u8; 8]) -> Result<FileHeader, String> {
        let Some(h) = data.get(..HEADER_LEN) else {
            return Err(format!(
                "its header is cut short ({} of {HEADER_LEN} bytes)",
                data.len()
            ));
        };
        if h[..8] != magic {
            return Err("it does not start as a license-server store file does".into());
        }
        if crc32fast::hash(&h[..32]) != le32(&h[32..36]) {
            return Err("its header checksum does not match".into());
        }
        let version = le32(&h[8..12]);
        if version != VERSION {
            return Err(format!(
                "it is in format version {version}; this license server reads version {VERSION} (was it written by a newer one?)"
            ));
        }
        Ok(FileHeader {
            magic,
            epoch: le64(&h[16..24]),
            base: le64(&h[24..32]),
        })
    }
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Appends one framed record.
pub fn put_frame(buf: &mut Vec<u8>, payload: &[u8]) {
    let len = payload.len() as u32;
    let mut h = [0u8; RECORD_HEADER];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4..8].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let hcrc = crc32fast::hash(&h[..8]);
    h[8..12].copy_from_slice(&hcrc.to_le_bytes());
    buf.extend_from_slice(&h);
    buf.extend_from_slice(payload);
}

/// Frames a payload being encoded at the end of `buf`: reserve a header with
/// [`begin_frame`], encode the payload, then [`end_frame`].
pub fn begin_frame(buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; RECORD_HEADER]);
    start
}

pub fn end_frame(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start - RECORD_HEADER) as u32;
    let crc = crc32fast::hash(&buf[start + RECORD_HEADER..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    let hcrc = crc32fast::hash(&buf[start..start + 8]);
    buf[start + 8..start + 12].copy_from_slice(&hcrc.to_le_bytes());
}

/// What stopped a reader before the end of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The last record was cut short (a crash while it was appended), or the file ends in
    /// zero bytes where a record would start: everything from `offset` on can be cut.
    Torn { offset: u64 },
    /// A record that cannot be trusted: a checksum does not match or its length is
    /// impossible.
    Damaged {
        offset: u64,
        /// Zero-based number of the record in its file.
        record: u64,
        what: String,
    },
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Torn { offset } => write!(f, "a record cut short at byte {offset}"),
            Stop::Damaged {
                offset,
                record,
                what,
            } => write!(f, "record {record} at byte {offset}: {what}"),
        }
    }
}

/// One record as read.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub offset: u64,
    /// Zero-based number of the record in its file.
    pub record: u64,
    pub payload: &'a [u8],
}

/// Reads the records after a file's header, in order.
///
/// The rules: a record whose header verifies but whose payload runs past the end of the
/// file, a record header cut off by the end of the file, and a tail of zero bytes are a
/// *torn* last write; anything else that does not verify (a header or payload checksum,
/// a length of zero or over [`MAX_RECORD`]) is *damage*. A header carries its own
/// checksum so that a damaged length is never taken for a torn record.
#[derive(Debug)]
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    record: u64,
}

impl<'a> Reader<'a> {
    /// `data` is the whole file; reading starts after its header.
    pub fn new(data: &'a [u8]) -> Self {
        Reader {
            data,
            pos: HEADER_LEN.min(data.len()),
            record: 0,
        }
    }

    /// Reads records from `pos` on (the pair's batches, whose header is their own).
    pub fn at(data: &'a [u8], pos: usize) -> Self {
        Reader {
            data,
            pos: pos.min(data.len()),
            record: 0,
        }
    }

    /// Number of the next record.
    pub fn record(&self) -> u64 {
        self.record
    }

    /// Where the next record starts (after the last good one).
    pub fn offset(&self) -> u64 {
        self.pos as u64
    }

    /// The next record, `None` at a clean end, or why reading stops.
    pub fn next_frame(&mut self) -> Option<Result<Frame<'a>, Stop>> {
        let rest = &self.data[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let offset = self.pos as u64;
        // A header cut off by the end of the file, or zeros where a record would start
        // (a file extended but not yet written when the machine stopped).
        if rest.len() < RECORD_HEADER || rest.iter().all(|b| *b == 0) {
            return Some(Err(Stop::Torn { offset }));
        }
        let h = &rest[..RECORD_HEADER];
        if crc32fast::hash(&h[..8]) != le32(&h[8..12]) {
            return Some(Err(self.damaged("its header checksum does not match")));
        }
        let len = le32(&h[0..4]) as usize;
        if len == 0 || len > MAX_RECORD {
            return Some(Err(self.damaged(&format!("its length {len} is impossible"))));
        }
        let Some(payload) = rest.get(RECORD_HEADER..RECORD_HEADER + len) else {
            return Some(Err(Stop::Torn { offset }));
        };
        if crc32fast::hash(payload) != le32(&h[4..8]) {
            return Some(Err(self.damaged("its checksum does not match")));
        }
        let frame = Frame {
            offset,
            record: self.record,
            payload,
        };
        self.pos += RECORD_HEADER + len;
        self.record += 1;
        Some(Ok(frame))
    }

    fn damaged(&self, what: &str) -> Stop {
        Stop::Damaged {
            offset: self.pos as u64,
            record: self.record,
            what: what.to_owned(),
        }
    }

    /// After damage: skips to the next position where a whole record verifies (header
    /// and payload checksums), for salvaging. Returns the bytes skipped, or `None` when no
    /// record follows.
    pub fn resync(&mut self) -> Option<u64> {
        let start = self.pos;
        let mut p = self.pos + 1;
        while p + RECORD_HEADER <= self.data.len() {
            let h = &self.data[p..p + RECORD_HEADER];
            if crc32fast::hash(&h[..8]) == le32(&h[8..12]) {
                let len = le32(&h[0..4]) as usize;
                if len > 0
                    && len <= MAX_RECORD
                    && let Some(payload) = self.data.get(p + RECORD_HEADER..p + RECORD_HEADER + len)
                    && crc32fast::hash(payload) == le32(&h[4..8])
                {
                    self.pos = p;
                    // The damaged record counts as one.
                    self.record += 1;
                    return Some((p - start) as u64);
                }
            }
            p += 1;
        }
        None
    }

    /// Skips the current record by its length (its header verified, its payload did not).
    pub fn skip_damaged(&mut self) -> bool {
        let rest = &self.data[self.pos..];
        if rest.len() < RECORD_HEADER {
            return false;
        }
        let h = &rest[..RECORD_HEADER];
        if crc32fast::hash(&h[..8]) != le32(&h[8..12]) {
            return false;
        }
        let len = le32(&h[0..4]) as usize;
        if len == 0 || len > MAX_RECORD || rest.len() < RECORD_HEADER + len {
            return false;
        }
        self.pos += RECORD_HEADER + len;
        self.record += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(payloads: &[&[u8]]) -> Vec<u8> {
        let mut buf = FileHeader {
            magic: JOURNAL_MAGIC,
            epoch: 7,
            base: 1,
        }
        .encode()
        .to_vec();
        for p in payloads {
            put_frame(&mut buf, p);
        }
        buf
    }

    fn read_all(data: &[u8]) -> (usize, Option<Stop>) {
        let mut r = Reader::new(data);
        let mut n = 0;
        loop {
            match r.next_frame() {
                None => return (n, None),
                Some(Ok(_)) => n += 1,
                Some(Err(stop)) => return (n, Some(stop)),
            }
        }
    }

    #[test]
    fn header_round_trips_and_refuses_other_files() {
        let h = FileHeader {
            magic: SNAPSHOT_MAGIC,
            epoch: 42,
            base: 9,
        };
        let bytes = h.encode();
        assert_eq!(FileHeader::decode(&bytes, SNAPSHOT_MAGIC), Ok(h));
        assert!(FileHeader::decode(&bytes, JOURNAL_MAGIC).is_err());
        let mut flipped = bytes;
        flipped[20] ^= 1;
        assert!(FileHeader::decode(&flipped, SNAPSHOT_MAGIC).is_err());
        assert!(FileHeader::decode(&bytes[..10], SNAPSHOT_MAGIC).is_err());
    }

    #[test]
    fn torn_and_damaged_are_told_apart() {
        let full = file(&[b"one", b"two", b"three"]);
        assert_eq!(read_all(&full), (3, None));
        let last = full.len() - (RECORD_HEADER + 5);
        // Cut anywhere inside the last record: torn at its start.
        for cut in last + 1..full.len() {
            assert_eq!(
                read_all(&full[..cut]),
                (
                    2,
                    Some(Stop::Torn {
                        offset: last as u64
                    })
                ),
                "cut at {cut}"
            );
        }
        // Zeros where a record would start: torn.
        let mut zeros = full.clone();
        zeros.extend_from_slice(&[0; 100]);
        assert_eq!(
            read_all(&zeros),
            (
                3,
                Some(Stop::Torn {
                    offset: full.len() as u64
                })
            )
        );
        // A flipped bit anywhere in a record, the last included, is damage.
        for at in [
            HEADER_LEN + 1,
            HEADER_LEN + 13,
            last + 2,
            last + 14,
            full.len() - 1,
        ] {
            let mut bad = full.clone();
            bad[at] ^= 0x10;
            let (_, stop) = read_all(&bad);
            assert!(
                matches!(stop, Some(Stop::Damaged { .. })),
                "flip at {at}: {stop:?}"
            );
        }
        // A length made larger by a flip is damage, not a torn record.
        let mut bad = full.clone();
        bad[last + 2] ^= 0x40;
        assert!(matches!(
            read_all(&bad).1,
            Some(Stop::Damaged { record: 2, .. })
        ));
    }

    #[test]
    fn resync_finds_the_next_good_record() {
        let full = file(&[b"one", b"two", b"three"]);
        let mut bad = full.clone();
        bad[HEADER_LEN + 2] ^= 0x01; // the first record's length
        let mut r = Reader::new(&bad);
        assert!(matches!(
            r.next_frame(),
            Some(Err(Stop::Damaged { record: 0, .. }))
        ));
        assert_eq!(r.resync(), Some((RECORD_HEADER + 3) as u64));
        let f = r.next_frame().unwrap().unwrap();
        assert_eq!((f.payload, f.record), (&b"two"[..], 1));
    }
}
