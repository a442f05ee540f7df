//! A minimal zip reader and writer for PyTorch containers: stored (uncompressed)
//! entries only, central directory authoritative, zip64 end records and zip64 size
//! extras understood on reading, CRC-32 checked. Written archives align each entry's
//! data to 64 bytes with a padding extra field (id `FB`, filled with `Z`), as PyTorch
//! does, and use no data descriptors, zero timestamps and no zip64 records.
//!
//! Reference: PKWARE APPNOTE.TXT (record layouts; facts only).

use super::{OfflineError, Result};

/// Alignment of entry data in written files, as PyTorch's `.storage_alignment`.
const ALIGN: usize = 64;

pub(super) fn zip_err(entry: &str, reason: &str) -> OfflineError {
    OfflineError::Zip { entry: entry.to_owned(), reason: reason.to_owned() }
}

/// One central-directory entry.
#[derive(Debug)]
pub(super) struct ZipEntry {
    pub(super) name: String,
    method: u16,
    flags: u16,
    crc: u32,
    size: u64,
    comp_size: u64,
    local_offset: u64,
}

fn rd_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}
fn rd_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}
fn rd_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

/// Locate the central directory: (entry count, offset), via zip64 records if needed.
fn find_central_directory(b: &[u8]) -> Result<(u64, u64)> {
    let trunc = || zip_err("", "end of central directory record not found");
    let lowest = b.len().saturating_sub(22 + 0xffff);
    let eocd =
        (lowest..=b.len().saturating_sub(22)).rev().find(|&i| rd_u32(b, i) == Some(0x0605_4b50)).ok_or_else(trunc)?;
    let count = rd_u16(b, eocd + 10).ok_or_else(trunc)?;
    let offset = rd_u32(b, eocd + 16).ok_or_else(trunc)?;
    if count != 0xffff && offset != 0xffff_ffff {
        return Ok((u64::from(count), u64::from(offset)));
    }
    let bad64 = || zip_err("", "zip64 end of central directory is malformed");
    let loc = eocd.checked_sub(20).ok_or_else(bad64)?;
    if rd_u32(b, loc) != Some(0x0706_4b50) {
        return Err(bad64());
    }
    let rec = usize::try_from(rd_u64(b, loc + 8).ok_or_else(bad64)?).map_err(|_| bad64())?;
    if rd_u32(b, rec) != Some(0x0606_4b50) {
        return Err(bad64());
    }
    let count = rd_u64(b, rec.saturating_add(32)).ok_or_else(bad64)?;
    let offset = rd_u64(b, rec.saturating_add(48)).ok_or_else(bad64)?;
    Ok((count, offset))
}

pub(super) fn read_zip_directory(b: &[u8]) -> Result<Vec<ZipEntry>> {
    let (count, offset) = find_central_directory(b)?;
    let mut pos = usize::try_from(offset).unwrap_or(usize::MAX);
    let mut entries = Vec::new();
    for _ in 0..count {
        let (entry, next) = read_cd_entry(b, pos)?;
        entries.push(entry);
        pos = next;
    }
    Ok(entries)
}

fn read_cd_entry(b: &[u8], at: usize) -> Result<(ZipEntry, usize)> {
    let bad = || zip_err("", &format!("central directory entry at {at} is truncated or corrupt"));
    if rd_u32(b, at) != Some(0x0201_4b50) {
        return Err(bad());
    }
    let f16 = |o: usize| rd_u16(b, at + o).ok_or_else(bad);
    let f32_ = |o: usize| rd_u32(b, at + o).ok_or_else(bad);
    let (name_len, extra_len, comment_len) = (usize::from(f16(28)?), usize::from(f16(30)?), usize::from(f16(32)?));
    let name_at = at + 46;
    let name = b.get(name_at..name_at + name_len).ok_or_else(bad)?;
    let name = String::from_utf8_lossy(name).into_owned();
    let extra = b.get(name_at + name_len..name_at + name_len + extra_len).ok_or_else(bad)?;
    let mut entry = ZipEntry {
        name,
        method: f16(10)?,
        flags: f16(8)?,
        crc: f32_(16)?,
        comp_size: u64::from(f32_(20)?),
        size: u64::from(f32_(24)?),
        local_offset: u64::from(f32_(42)?),
    };
    apply_zip64_extra(&mut entry, extra);
    Ok((entry, name_at + name_len + extra_len + comment_len))
}

/// Replace saturated 32-bit fields with the values of the zip64 extra field (id 1).
fn apply_zip64_extra(e: &mut ZipEntry, extra: &[u8]) {
    let mut i = 0;
    while let (Some(id), Some(len)) = (rd_u16(extra, i), rd_u16(extra, i + 2)) {
        let body = extra.get(i + 4..i + 4 + usize::from(len)).unwrap_or(&[]);
        if id == 1 {
            let mut vals = body.chunks_exact(8).filter_map(|c| rd_u64(c, 0));
            for field in [&mut e.size, &mut e.comp_size, &mut e.local_offset] {
                if *field == 0xffff_ffff {
                    if let Some(v) = vals.next() {
                        *field = v;
                    }
                }
            }
        }
        i += 4 + usize::from(len);
    }
}

/// The stored bytes of an entry, after checking method, flags and CRC.
pub(super) fn entry_data<'a>(b: &'a [u8], e: &ZipEntry) -> Result<&'a [u8]> {
    let err = |r: &str| zip_err(&e.name, r);
    if e.flags & 1 != 0 {
        return Err(err("entry is encrypted"));
    }
    if e.method != 0 || e.comp_size != e.size {
        return Err(err(&format!("compression method {} (PyTorch stores entries uncompressed)", e.method)));
    }
    let lo = usize::try_from(e.local_offset).map_err(|_| err("offset overflows"))?;
    if rd_u32(b, lo) != Some(0x0403_4b50) {
        return Err(err("local header signature missing"));
    }
    let name_len = rd_u16(b, lo + 26).ok_or_else(|| err("local header truncated"))?;
    let extra_len = rd_u16(b, lo + 28).ok_or_else(|| err("local header truncated"))?;
    let start = lo + 30 + usize::from(name_len) + usize::from(extra_len);
    let size = usize::try_from(e.size).map_err(|_| err("size overflows"))?;
    let data = start
        .checked_add(size)
        .and_then(|end| b.get(start..end))
        .ok_or_else(|| err("entry data runs past the end of the file"))?;
    let crc = crc32(data);
    if crc != e.crc {
        return Err(err(&format!("CRC-32 mismatch: stored {:08x}, computed {crc:08x}", e.crc)));
    }
    Ok(data)
}

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// CRC-32 (IEEE 802.3, reflected), as used by zip.
fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8))
}

/// Minimal writer for a stored (uncompressed), 64-byte-aligned zip archive.
#[derive(Default)]
pub(super) struct ZipWriter {
    out: Vec<u8>,
    central: Vec<u8>,
    count: u16,
}

impl ZipWriter {
    pub(super) fn add(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let too_big = || OfflineError::Unpicklable { reason: "entry too large for a non-zip64 archive".into() };
        let size = u32::try_from(data.len()).map_err(|_| too_big())?;
        let offset = u32::try_from(self.out.len()).map_err(|_| too_big())?;
        let name_len = u16::try_from(name.len()).map_err(|_| too_big())?;
        let crc = crc32(data);
        // Padding extra field "FB" so that the data starts on a 64-byte boundary.
        let base = self.out.len() + 30 + name.len() + 4;
        let pad = (ALIGN - base % ALIGN) % ALIGN;
        let common = |v: &mut Vec<u8>| {
            for x in [0u16, 0, 0, 0, 0] {
                v.extend_from_slice(&x.to_le_bytes()); // version, flags, method, time, date
            }
            v.extend_from_slice(&crc.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&name_len.to_le_bytes());
        };
        self.out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        common(&mut self.out);
        self.out.extend_from_slice(&(4 + pad as u16).to_le_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"FB");
        self.out.extend_from_slice(&(pad as u16).to_le_bytes());
        self.out.resize(self.out.len() + pad, b'Z');
        self.out.extend_from_slice(data);

        self.central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        self.central.extend_from_slice(&0u16.to_le_bytes()); // version made by
        common(&mut self.central);
        // extra len, comment len, disk, internal attrs (2 bytes each), external attrs (4)
        self.central.extend_from_slice(&[0u8; 12]);
        self.central.extend_from_slice(&offset.to_le_bytes());
        self.central.extend_from_slice(name.as_bytes());
        self.count = self.count.checked_add(1).ok_or_else(too_big)?;
        Ok(())
    }

    pub(super) fn finish(mut self) -> Result<Vec<u8>> {
        let too_big = || OfflineError::Unpicklable { reason: "archive too large for a non-zip64 archive".into() };
        let cd_offset = u32::try_from(self.out.len()).map_err(|_| too_big())?;
        let cd_size = u32::try_from(self.central.len()).map_err(|_| too_big())?;
        self.out.append(&mut self.central);
        self.out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        self.out.extend_from_slice(&[0u8; 4]); // disk numbers
        self.out.extend_from_slice(&self.count.to_le_bytes());
        self.out.extend_from_slice(&self.count.to_le_bytes());
        self.out.extend_from_slice(&cd_size.to_le_bytes());
        self.out.extend_from_slice(&cd_offset.to_le_bytes());
        self.out.extend_from_slice(&0u16.to_le_bytes()); // comment length
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        // The standard CRC-32 check value.
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn written_archive_lists_its_entries() {
        let mut w = ZipWriter::default();
        w.add("a/x", b"hello").unwrap();
        w.add("a/yy", b"").unwrap();
        let bytes = w.finish().unwrap();
        let entries = read_zip_directory(&bytes).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entry_data(&bytes, &entries[0]).unwrap(), b"hello");
        assert_eq!(entry_data(&bytes, &entries[1]).unwrap(), b"");
        assert_eq!(entries[1].name, "a/yy");
    }
}
