//! Spool unit tests: order, memory/disk split, disk cap, restart replay, corrupt tails.

use super::*;

fn cfg(dir: &Path, mem: usize) -> SpoolConfig {
    SpoolConfig {
        dir: Some(dir.to_path_buf()),
        mem_capacity: mem,
        max_disk_bytes: 4096,
        segment_bytes: 1024,
        max_record_bytes: 200,
    }
}

fn payload(i: u64) -> Vec<u8> {
    format!("message-{i:05}").into_bytes()
}

/// Ack everything in order, returning the payloads delivered.
fn drain(s: &mut Spool) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let batch = s.peek_from(0, 7).unwrap();
        if batch.is_empty() {
            return out;
        }
        for (seq, p) in batch {
            out.push(p);
            s.ack(seq).unwrap();
        }
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    list_segments(dir).unwrap().into_iter().map(|(_, p)| p).collect()
}

#[test]
fn order_is_kept_across_memory_and_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Spool::open(cfg(tmp.path(), 10)).unwrap();
    for i in 0..100 {
        s.push(payload(i)).unwrap();
    }
    assert_eq!(s.len(), 100);
    assert_eq!(s.stats().spooled, 90, "records beyond memory go to disk");
    assert!(!segment_files(tmp.path()).is_empty());
    let got = drain(&mut s);
    assert_eq!(got, (0..100).map(payload).collect::<Vec<_>>());
    assert!(s.is_empty());
    assert!(segment_files(tmp.path()).is_empty(), "delivered segments are removed");
    assert_eq!(s.disk_bytes(), 0);
}

#[test]
fn out_of_order_acks_release_only_the_front() {
    let mut s = Spool::open(SpoolConfig { mem_capacity: 8, ..SpoolConfig::default() }).unwrap();
    let seqs: Vec<u64> = (0..4).map(|i| s.push(payload(i)).unwrap()).collect();
    assert_eq!(s.ack(seqs[1]).unwrap(), 0);
    assert_eq!(s.ack(seqs[2]).unwrap(), 0);
    assert_eq!(s.front_seq(), Some(seqs[0]));
    assert_eq!(s.ack(seqs[0]).unwrap(), 3);
    assert_eq!(s.front_seq(), Some(seqs[3]));
    assert_eq!(s.ack(seqs[0]).unwrap(), 0, "a repeated ack is ignored");
}

#[test]
fn memory_only_spool_drops_oldest_when_full() {
    let mut s = Spool::open(SpoolConfig { mem_capacity: 5, ..SpoolConfig::default() }).unwrap();
    for i in 0..8 {
        s.push(payload(i)).unwrap();
    }
    assert_eq!(s.stats().dropped, 3);
    assert_eq!(drain(&mut s), (3..8).map(payload).collect::<Vec<_>>());
}

#[test]
fn disk_cap_drops_oldest_segments_and_counts_them() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Spool::open(cfg(tmp.path(), 4)).unwrap();
    // 29-byte records: 35 per 1024-byte segment; 4096 bytes hold ~141 records.
    for i in 0..400 {
        s.push(payload(i)).unwrap();
    }
    let st = s.stats();
    assert!(st.dropped > 0, "{st:?}");
    assert!(s.disk_bytes() <= 4096, "{}", s.disk_bytes());
    assert_eq!(s.len() + st.dropped, 400);
    let got = drain(&mut s);
    // The 4 memory records, then a gap, then the newest records, in order.
    assert_eq!(got[..4], (0..4).map(payload).collect::<Vec<_>>()[..]);
    let rest: Vec<u64> = got[4..].iter().map(|p| String::from_utf8_lossy(&p[8..]).parse().unwrap()).collect();
    assert!(rest.windows(2).all(|w| w[1] == w[0] + 1), "contiguous tail");
    assert_eq!(*rest.last().unwrap(), 399);
    assert_eq!(got.len() as u64, 400 - st.dropped);
}

#[test]
fn reopen_replays_unacked_records_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut s = Spool::open(cfg(tmp.path(), 3)).unwrap();
        for i in 0..50 {
            s.push(payload(i)).unwrap();
        }
        // Deliver the 3 memory records and 12 disk ones, then "crash".
        let mut acked = 0;
        while acked < 15 {
            let (seq, _) = s.peek_from(0, 1).unwrap()[0].clone();
            s.ack(seq).unwrap();
            acked += 1;
        }
        assert_eq!(s.len(), 50 - 15);
        assert_eq!(Spool::read_cursor(tmp.path()), Some(15));
    }
    let mut s = Spool::open(cfg(tmp.path(), 3)).unwrap();
    assert_eq!(s.stats().replayed, 35);
    assert_eq!(s.len(), 35);
    let first_new = s.push(payload(50)).unwrap();
    assert_eq!(first_new, 51, "sequence numbers continue after a restart");
    assert_eq!(drain(&mut s), (15..51).map(payload).collect::<Vec<_>>());
    let s = Spool::open(cfg(tmp.path(), 3)).unwrap();
    assert!(s.is_empty(), "nothing replays twice");
}

#[test]
fn persist_mem_makes_memory_records_survive_restart() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut s = Spool::open(cfg(tmp.path(), 10)).unwrap();
        for i in 0..15 {
            s.push(payload(i)).unwrap();
        }
        s.persist_mem().unwrap();
    }
    let mut s = Spool::open(cfg(tmp.path(), 10)).unwrap();
    assert_eq!(drain(&mut s), (0..15).map(payload).collect::<Vec<_>>());
}

#[test]
fn corrupt_and_truncated_tails_are_skipped_without_panic() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut s = Spool::open(cfg(tmp.path(), 1)).unwrap();
        for i in 0..60 {
            s.push(payload(i)).unwrap();
        }
    }
    // Record 0 stayed in memory; 1..=35 fill the first segment, 36..=59 the second.
    let segs = segment_files(tmp.path());
    assert_eq!(segs.len(), 2);
    let last = segs.last().unwrap();
    let mut data = fs::read(last).unwrap();
    // Half a record at the end (a crash mid-write).
    data.extend_from_slice(&[29, 0, 0, 0, 1, 2, 3]);
    fs::write(last, &data).unwrap();
    // Flip a payload byte of the second record of the first segment.
    let first = &segs[0];
    let mut d0 = fs::read(first).unwrap();
    d0[29 + HEADER + 3] ^= 0xff;
    fs::write(first, &d0).unwrap();

    let mut s = Spool::open(cfg(tmp.path(), 1)).unwrap();
    assert_eq!(s.stats().corrupt, 2, "{:?}", s.stats());
    let got = drain(&mut s);
    assert_eq!(got[0], payload(1), "memory record 0 was lost, disk starts at 1");
    assert!(!got.contains(&payload(2)), "record after the corruption is skipped");
    assert_eq!(
        got[1..],
        (36..60).map(payload).collect::<Vec<_>>()[..],
        "second segment intact up to its truncated tail"
    );
    assert_eq!(fs::metadata(last).map(|m| m.len() % 29).unwrap_or(0), 0);
}

#[test]
fn garbage_files_and_bad_config_are_errors_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("00000000000000000001.seg"), b"\xff\xff\xff\xff garbage").unwrap();
    fs::write(tmp.path().join("acked"), b"xx").unwrap();
    let s = Spool::open(cfg(tmp.path(), 2)).unwrap();
    assert!(s.is_empty());
    assert_eq!(s.stats().corrupt, 1);
    let c = SpoolConfig { max_disk_bytes: 100, ..cfg(tmp.path(), 2) };
    assert!(matches!(Spool::open(c), Err(PublishError::Config { .. })));
    let mut s = Spool::open(cfg(tmp.path(), 2)).unwrap();
    assert!(matches!(s.push(vec![0; 201]), Err(PublishError::RecordTooLarge { len: 201, max: 200 })));
}
