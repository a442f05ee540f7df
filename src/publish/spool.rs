//! Bounded outbound queue that spills to disk while the broker is unreachable.
//!
//! Order is strictly FIFO by a monotonically increasing sequence number. Up to
//! `mem_capacity` records live in memory; once that is full, every new record is
//! appended to segment files `<dir>/<first_seq:020>.seg` until the disk backlog has been
//! read back, so disk records are always newer than memory-only ones. A record is
//! `[len: u32 LE][crc32(seq ‖ payload): u32 LE][seq: u64 LE][payload]`. Records leave the
//! queue only through [`Spool::ack`] (the broker acknowledged them); the highest acked
//! disk sequence number is kept in `<dir>/acked` (written atomically by rename), and a
//! segment file is removed once all its records were acked.
//!
//! Reopening the directory replays the unacknowledged disk records in order. A
//! truncated or corrupt record ends its segment: the rest is skipped, counted in
//! [`SpoolStats::corrupt`] and cut off the file. When the disk backlog exceeds
//! `max_disk_bytes` the oldest segment is deleted and its unread records counted in
//! [`SpoolStats::dropped`] (granularity: one segment). Without a directory the spool is
//! memory-only and drops its oldest record when full. Writes are not fsynced: the
//! spool survives a process crash or restart, not a power loss.

use std::collections::{BTreeSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{PublishError, Result};

const HEADER: usize = 16;
const SEGMENT_EXT: &str = "seg";
const CURSOR_FILE: &str = "acked";

/// Spool limits.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// Spill directory; `None` keeps everything in memory (oldest dropped when full).
    pub dir: Option<PathBuf>,
    /// Records held in memory (also the largest in-flight window the publisher may use).
    pub mem_capacity: usize,
    /// Cap on segment bytes on disk; at least two segments.
    pub max_disk_bytes: u64,
    /// A segment file is closed once it reaches this size.
    pub segment_bytes: u64,
    /// Largest payload accepted.
    pub max_record_bytes: usize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: None,
            mem_capacity: 1000,
            max_disk_bytes: 256 << 20,
            segment_bytes: 4 << 20,
            max_record_bytes: 1 << 20,
        }
    }
}

/// Counters of the spool's life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records written to disk.
    pub spooled: u64,
    /// Records lost to the disk cap (or to the memory cap without a directory).
    pub dropped: u64,
    /// Corrupt or truncated segment tails skipped.
    pub corrupt: u64,
    /// Records replayed from disk when the spool was opened.
    pub replayed: u64,
}

struct Rec {
    seq: u64,
    payload: Vec<u8>,
    on_disk: bool,
}

struct Segment {
    path: PathBuf,
    first_seq: u64,
    last_seq: u64,
    bytes: u64,
    records: u64,
    /// Records already moved to memory (or skipped as acked) and the byte offset after them.
    loaded: u64,
    read_off: u64,
    append: Option<File>,
}

/// The queue. Not thread-safe by itself; the publisher wraps it in a mutex.
pub struct Spool {
    cfg: SpoolConfig,
    mem: VecDeque<Rec>,
    segs: VecDeque<Segment>,
    next_seq: u64,
    acked: BTreeSet<u64>,
    disk_bytes: u64,
    stats: SpoolStats,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PublishError + '_ {
    move |source| PublishError::SpoolIo { path: path.to_path_buf(), source }
}

impl Spool {
    /// Open (or create) a spool; with a directory, replays what an earlier run left.
    pub fn open(cfg: SpoolConfig) -> Result<Spool> {
        validate(&cfg)?;
        let mut spool = Spool {
            cfg,
            mem: VecDeque::new(),
            segs: VecDeque::new(),
            next_seq: 1,
            acked: BTreeSet::new(),
            disk_bytes: 0,
            stats: SpoolStats::default(),
        };
        if let Some(dir) = spool.cfg.dir.clone() {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            spool.recover(&dir)?;
            spool.fill()?;
        }
        Ok(spool)
    }

    /// Append a record; returns its sequence number.
    pub fn push(&mut self, payload: Vec<u8>) -> Result<u64> {
        if payload.len() > self.cfg.max_record_bytes {
            return Err(PublishError::RecordTooLarge { len: payload.len(), max: self.cfg.max_record_bytes });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.cfg.dir.is_none() {
            if self.mem.len() >= self.cfg.mem_capacity {
                self.mem.pop_front();
                self.stats.dropped += 1;
            }
            self.mem.push_back(Rec { seq, payload, on_disk: false });
        } else if self.segs.is_empty() && self.mem.len() < self.cfg.mem_capacity {
            self.mem.push_back(Rec { seq, payload, on_disk: false });
        } else {
            self.append_disk(seq, &payload)?;
            self.enforce_disk_cap()?;
        }
        Ok(seq)
    }

    /// Up to `max` records with sequence number ≥ `from`, in order (refills from disk).
    pub fn peek_from(&mut self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        self.fill()?;
        Ok(self.mem.iter().filter(|r| r.seq >= from).take(max).map(|r| (r.seq, r.payload.clone())).collect())
    }

    /// Mark `seq` delivered. Records leave from the front only, in order; returns how many left.
    pub fn ack(&mut self, seq: u64) -> Result<usize> {
        match self.mem.front() {
            Some(f) if seq >= f.seq => {
                self.acked.insert(seq);
            }
            _ => return Ok(0),
        }
        let mut popped = 0;
        let mut disk_seq = None;
        while let Some(f) = self.mem.front() {
            if !self.acked.remove(&f.seq) {
                break;
            }
            if f.on_disk {
                disk_seq = Some(f.seq);
            }
            self.mem.pop_front();
            popped += 1;
        }
        if let Some(s) = disk_seq {
            self.write_cursor(s)?;
            self.remove_consumed_segments()?;
        }
        self.fill()?;
        Ok(popped)
    }

    /// Records not yet acknowledged (memory and disk).
    pub fn len(&self) -> u64 {
        let disk: u64 = self.segs.iter().map(|s| s.records - s.loaded).sum();
        self.mem.len() as u64 + disk
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sequence number of the oldest unacknowledged record.
    pub fn front_seq(&self) -> Option<u64> {
        self.mem.front().map(|r| r.seq).or_else(|| self.segs.front().map(|s| s.first_seq))
    }

    pub fn stats(&self) -> SpoolStats {
        self.stats
    }

    /// Bytes of segment files currently on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// Write memory-only records to disk (shutdown with a backlog) so a restart replays them.
    pub fn persist_mem(&mut self) -> Result<()> {
        let Some(dir) = self.cfg.dir.clone() else {
            return Ok(());
        };
        let idx: Vec<usize> = (0..self.mem.len()).filter(|&i| !self.mem[i].on_disk).collect();
        let Some(&first) = idx.first() else {
            return Ok(());
        };
        let first_seq = self.mem[first].seq;
        let path = segment_path(&dir, first_seq);
        let mut buf = Vec::new();
        for &i in &idx {
            encode_record(&mut buf, self.mem[i].seq, &self.mem[i].payload);
            self.mem[i].on_disk = true;
        }
        fs::write(&path, &buf).map_err(io_err(&path))?;
        let n = idx.len() as u64;
        let last_seq = self.mem[idx[idx.len() - 1]].seq;
        let bytes = buf.len() as u64;
        self.disk_bytes += bytes;
        self.stats.spooled += n;
        let seg = Segment { path, first_seq, last_seq, bytes, records: n, loaded: n, read_off: bytes, append: None };
        self.segs.push_front(seg);
        Ok(())
    }

    fn append_disk(&mut self, seq: u64, payload: &[u8]) -> Result<()> {
        let mut buf = Vec::with_capacity(HEADER + payload.len());
        encode_record(&mut buf, seq, payload);
        let rotate = match self.segs.back() {
            Some(s) => s.append.is_none() || s.bytes + buf.len() as u64 > self.cfg.segment_bytes,
            None => true,
        };
        if rotate {
            self.new_segment(seq)?;
        }
        let seg = self.segs.back_mut().ok_or(PublishError::Stopped)?;
        if let Some(f) = seg.append.as_mut() {
            f.write_all(&buf).map_err(io_err(&seg.path))?;
        }
        seg.bytes += buf.len() as u64;
        seg.records += 1;
        seg.last_seq = seq;
        self.disk_bytes += buf.len() as u64;
        self.stats.spooled += 1;
        Ok(())
    }

    fn new_segment(&mut self, first_seq: u64) -> Result<()> {
        let dir = self.cfg.dir.clone().unwrap_or_default();
        if let Some(prev) = self.segs.back_mut() {
            prev.append = None;
        }
        let path = segment_path(&dir, first_seq);
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
        self.segs.push_back(Segment {
            path,
            first_seq,
            last_seq: first_seq,
            bytes: 0,
            records: 0,
            loaded: 0,
            read_off: 0,
            append: Some(file),
        });
        Ok(())
    }

    fn enforce_disk_cap(&mut self) -> Result<()> {
        while self.disk_bytes > self.cfg.max_disk_bytes && self.segs.len() > 1 {
            if let Some(seg) = self.segs.pop_front() {
                self.stats.dropped += seg.records - seg.loaded;
                self.disk_bytes -= seg.bytes;
                tracing::warn!(path = %seg.path.display(), dropped = seg.records - seg.loaded, "spool disk cap reached, dropping oldest segment");
                remove_file(&seg.path)?;
            }
        }
        Ok(())
    }

    /// Move disk records into memory once memory has drained to half its capacity.
    fn fill(&mut self) -> Result<()> {
        if self.mem.len() > self.cfg.mem_capacity / 2 {
            return Ok(());
        }
        for i in 0..self.segs.len() {
            if self.mem.len() >= self.cfg.mem_capacity {
                break;
            }
            if self.segs[i].loaded < self.segs[i].records {
                self.load_segment(i)?;
            }
        }
        Ok(())
    }

    fn load_segment(&mut self, i: usize) -> Result<()> {
        let room = self.cfg.mem_capacity - self.mem.len();
        let max = self.cfg.max_record_bytes;
        let seg = &mut self.segs[i];
        let data = fs::read(&seg.path).map_err(io_err(&seg.path))?;
        let mut off = seg.read_off as usize;
        let mut taken = 0;
        while taken < room && seg.loaded < seg.records {
            match decode_record(&data, off, max) {
                Ok((seq, payload, next)) => {
                    self.mem.push_back(Rec { seq, payload: payload.to_vec(), on_disk: true });
                    off = next;
                    seg.loaded += 1;
                    taken += 1;
                }
                Err(why) => {
                    tracing::warn!(path = %seg.path.display(), offset = off, why, "spool segment changed under us; skipping its rest");
                    self.stats.corrupt += 1;
                    self.stats.dropped += seg.records - seg.loaded;
                    seg.loaded = seg.records;
                    seg.append = None;
                    break;
                }
            }
        }
        seg.read_off = off as u64;
        Ok(())
    }

    fn remove_consumed_segments(&mut self) -> Result<()> {
        let front = self.mem.front().map(|r| r.seq).unwrap_or(u64::MAX);
        while let Some(seg) = self.segs.front() {
            if seg.loaded < seg.records || seg.last_seq >= front {
                break;
            }
            if let Some(seg) = self.segs.pop_front() {
                self.disk_bytes -= seg.bytes;
                remove_file(&seg.path)?;
            }
        }
        Ok(())
    }

    fn write_cursor(&self, seq: u64) -> Result<()> {
        let Some(dir) = &self.cfg.dir else {
            return Ok(());
        };
        let tmp = dir.join(format!("{CURSOR_FILE}.tmp"));
        let path = dir.join(CURSOR_FILE);
        let mut buf = seq.to_le_bytes().to_vec();
        buf.extend_from_slice(&crc32fast::hash(&seq.to_le_bytes()).to_le_bytes());
        fs::write(&tmp, &buf).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    fn read_cursor(dir: &Path) -> Option<u64> {
        let b = fs::read(dir.join(CURSOR_FILE)).ok()?;
        let seq = u64::from_le_bytes(b.get(0..8)?.try_into().ok()?);
        let crc = u32::from_le_bytes(b.get(8..12)?.try_into().ok()?);
        (crc == crc32fast::hash(&seq.to_le_bytes())).then_some(seq)
    }

    /// Scan segment files left by an earlier run; truncate corrupt tails.
    fn recover(&mut self, dir: &Path) -> Result<()> {
        let acked = Self::read_cursor(dir).unwrap_or(0);
        self.next_seq = acked + 1;
        for (first_seq, path) in list_segments(dir)? {
            match self.scan_segment(&path, first_seq, acked)? {
                Some(seg) => {
                    self.next_seq = self.next_seq.max(seg.last_seq + 1);
                    self.disk_bytes += seg.bytes;
                    self.stats.replayed += seg.records - seg.loaded;
                    self.segs.push_back(seg);
                }
                None => remove_file(&path)?,
            }
        }
        Ok(())
    }

    /// Valid records of one segment; `None` when nothing in it is left to deliver.
    fn scan_segment(&mut self, path: &Path, first_seq: u64, acked: u64) -> Result<Option<Segment>> {
        let data = fs::read(path).map_err(io_err(path))?;
        let (mut off, mut records, mut loaded, mut read_off) = (0usize, 0u64, 0u64, 0u64);
        let mut last_seq = 0u64;
        while off < data.len() {
            match decode_record(&data, off, self.cfg.max_record_bytes) {
                Ok((seq, _, next)) if seq > last_seq && seq >= first_seq => {
                    records += 1;
                    last_seq = seq;
                    if seq <= acked {
                        loaded += 1;
                        read_off = next as u64;
                    }
                    off = next;
                }
                Ok(_) | Err(_) => {
                    tracing::warn!(path = %path.display(), offset = off, "corrupt or truncated spool record; skipping the rest of the segment");
                    self.stats.corrupt += 1;
                    let f = OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
                    f.set_len(off as u64).map_err(io_err(path))?;
                    break;
                }
            }
        }
        if records == loaded {
            return Ok(None);
        }
        let bytes = off as u64;
        Ok(Some(Segment {
            path: path.to_path_buf(),
            first_seq,
            last_seq,
            bytes,
            records,
            loaded,
            read_off,
            append: None,
        }))
    }
}

fn validate(cfg: &SpoolConfig) -> Result<()> {
    let bad = |field, reason: String| Err(PublishError::Config { field, reason });
    if cfg.mem_capacity == 0 {
        return bad("spool.mem_capacity", "must be at least 1".into());
    }
    if cfg.segment_bytes < (HEADER + cfg.max_record_bytes) as u64 {
        return bad(
            "spool.segment_bytes",
            format!(
                "{} must hold one record of max_record_bytes {} plus {HEADER} header bytes",
                cfg.segment_bytes, cfg.max_record_bytes
            ),
        );
    }
    if cfg.max_disk_bytes < 2 * cfg.segment_bytes {
        return bad(
            "spool.max_disk_bytes",
            format!("{} must be at least two segments ({} bytes each)", cfg.max_disk_bytes, cfg.segment_bytes),
        );
    }
    Ok(())
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.{SEGMENT_EXT}"))
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some(SEGMENT_EXT) {
            continue;
        }
        if let Some(seq) = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()) {
            out.push((seq, path));
        }
    }
    out.sort();
    Ok(out)
}

fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

fn encode_record(buf: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(payload);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&h.finalize().to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// One record at `off`: `(seq, payload, offset after it)`, or why it is unreadable.
fn decode_record(data: &[u8], off: usize, max: usize) -> std::result::Result<(u64, &[u8], usize), &'static str> {
    let head = data.get(off..off + HEADER).ok_or("truncated header")?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let seq_bytes: [u8; 8] = head[8..16].try_into().map_err(|_| "short header")?;
    if len > max {
        return Err("length over the record limit");
    }
    let payload = data.get(off + HEADER..off + HEADER + len).ok_or("truncated payload")?;
    let mut h = crc32fast::Hasher::new();
    h.update(&seq_bytes);
    h.update(payload);
    if h.finalize() != crc {
        return Err("crc mismatch");
    }
    Ok((u64::from_le_bytes(seq_bytes), payload, off + HEADER + len))
}

#[cfg(test)]
#[path = "spool_tests.rs"]
mod tests;
