//! Tests of the segment log on its own: replay, segment rolling and deletion, torn tails and
//! damage.

use std::path::Path;

use openraft::{CommittedLeaderId, LogId, Vote};

use super::{Batch, Wal, MAGIC};
use crate::OpenError;

fn id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// An entry shaped like openraft's: its encoding starts with its log id.
fn entry(term: u64, index: u64) -> (LogId<u64>, String) {
    (id(term, index), format!("payload {index} of term {term}"))
}

fn append(wal: &mut Wal, term: u64, indexes: impl IntoIterator<Item = u64>) {
    let mut batch = Batch::default();
    for i in indexes {
        let e = entry(term, i);
        batch.push(e.0, &e).expect("encode");
    }
    wal.append(&batch).expect("append");
}

/// Every live entry, read back through `locate`.
fn read_all(wal: &Wal) -> Vec<(LogId<u64>, String)> {
    let mut out = Vec::new();
    for run in wal.locate(0, u64::MAX) {
        run.read(|bytes| {
            out.push(bincode::deserialize(bytes).expect("decode"));
            Ok(())
        })
        .expect("read");
    }
    out
}

fn expected(parts: &[(u64, std::ops::RangeInclusive<u64>)]) -> Vec<(LogId<u64>, String)> {
    parts
        .iter()
        .flat_map(|(term, range)| range.clone().map(|i| entry(*term, i)))
        .collect()
}

/// What the sync thread does after a sync that covers a purge: deletes the dead segments.
/// Returns how many went.
fn remove_dead(wal: &mut Wal) -> usize {
    let dead = wal.take_dead(wal.dead_below());
    for path in &dead {
        std::fs::remove_file(path).expect("remove");
    }
    dead.len()
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .map(|f| f.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

#[test]
fn replay_gives_back_entries_vote_committed_truncation_and_purge() {
    let dir = tempfile::tempdir().expect("temp dir");
    let vote = Vote::new(3, 2);
    {
        let mut wal = Wal::open(dir.path(), 1 << 20).expect("open");
        append(&mut wal, 1, 1..=10);
        wal.save_vote(&vote).expect("vote");
        wal.save_committed(Some(id(1, 6))).expect("committed");
        wal.truncate(8).expect("truncate");
        append(&mut wal, 2, 8..=9);
        // A follower overwriting a conflicting suffix without an explicit truncate.
        append(&mut wal, 3, 9..=12);
        wal.purge(id(1, 3)).expect("purge");
        wal.sync().expect("sync");
        assert_eq!(
            read_all(&wal),
            expected(&[(1, 4..=7), (2, 8..=8), (3, 9..=12)])
        );
    }
    let wal = Wal::open(dir.path(), 1 << 20).expect("reopen");
    assert_eq!(
        read_all(&wal),
        expected(&[(1, 4..=7), (2, 8..=8), (3, 9..=12)])
    );
    assert_eq!(wal.vote(), Some(vote));
    assert_eq!(wal.committed(), Some(id(1, 6)));
    assert_eq!(wal.purged(), Some(id(1, 3)));
    assert_eq!(wal.last_log_id(), Some(id(3, 12)));
    let some: Vec<_> = {
        let mut out = Vec::new();
        for run in wal.locate(6, 9) {
            run.read(|b| {
                out.push(bincode::deserialize::<(LogId<u64>, String)>(b).expect("decode"));
                Ok(())
            })
            .expect("read");
        }
        out
    };
    assert_eq!(some, expected(&[(1, 6..=7), (2, 8..=8), (3, 9..=9)]));
}

#[test]
fn a_hole_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut wal = Wal::open(dir.path(), 1 << 20).expect("open");
    append(&mut wal, 1, 1..=3);
    let mut batch = Batch::default();
    let e = entry(1, 5);
    batch.push(e.0, &e).expect("encode");
    assert!(wal.append(&batch).is_err(), "5 after 3 leaves a hole");
    assert_eq!(wal.last_log_id(), Some(id(1, 3)));
}

/// Small segments: the log rolls over to new files, a purge deletes the files that hold only
/// purged entries (including the one with the only vote record), and what is left replays to
/// the same log with the same vote.
#[test]
fn purged_segments_are_deleted_and_state_survives_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let vote = Vote::new(7, 1);
    {
        let mut wal = Wal::open(dir.path(), 4096).expect("open");
        wal.save_vote(&vote).expect("vote");
        for i in 1..=100 {
            append(&mut wal, 1, [i]);
        }
        // An earlier purge, so the headers of the segments after it carry a purge point that
        // the later purge overtakes: the surviving entries then start past it.
        wal.purge(id(1, 20)).expect("purge");
        for i in 101..=400 {
            append(&mut wal, 1, [i]);
        }
        assert!(wal.segment_count() > 5, "{} segments", wal.segment_count());
        wal.purge(id(1, 350)).expect("purge");
        wal.sync().expect("sync");
        assert!(remove_dead(&mut wal) > 0);
        assert_eq!(read_all(&wal), expected(&[(1, 351..=400)]));
    }
    let first_left = segments(dir.path()).first().cloned().expect("a segment");
    assert_ne!(
        first_left,
        dir.path().join(format!("{:020}.seg", 1)),
        "the first segment (with the vote record) was deleted"
    );
    let mut wal = Wal::open(dir.path(), 4096).expect("reopen");
    assert_eq!(read_all(&wal), expected(&[(1, 351..=400)]));
    assert_eq!(
        wal.vote(),
        Some(vote),
        "the vote came from a segment header"
    );
    assert_eq!(wal.purged(), Some(id(1, 350)));
    append(&mut wal, 1, 401..=402);
    assert_eq!(wal.last_log_id(), Some(id(1, 402)));
}

/// A record cut short by a crash at the end of the newest segment was never acknowledged: it is
/// cut off and the log goes on from there.
#[test]
fn a_torn_tail_is_cut_off() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let mut wal = Wal::open(dir.path(), 1 << 20).expect("open");
        append(&mut wal, 1, 1..=20);
        wal.sync().expect("sync");
    }
    let path = segments(dir.path()).pop().expect("a segment");
    let full = std::fs::read(&path).expect("read");
    // Half of one more record.
    let mut batch = Batch::default();
    let e = entry(1, 21);
    batch.push(e.0, &e).expect("encode");
    let mut torn = full.clone();
    torn.extend_from_slice(&batch.buf[..batch.buf.len() / 2]);
    std::fs::write(&path, &torn).expect("tear");
    let mut wal = Wal::open(dir.path(), 1 << 20).expect("a torn tail reopens");
    assert_eq!(read_all(&wal), expected(&[(1, 1..=20)]));
    assert_eq!(
        std::fs::metadata(&path).expect("stat").len(),
        full.len() as u64
    );
    append(&mut wal, 1, 21..=22);
    drop(wal);
    let wal = Wal::open(dir.path(), 1 << 20).expect("reopen");
    assert_eq!(read_all(&wal), expected(&[(1, 1..=22)]));
    drop(wal);

    // Zeros after the last record (a file extended but never written) are a torn tail too.
    let newest = segments(dir.path()).pop().expect("a segment");
    let mut zeros = std::fs::read(&newest).expect("read");
    zeros.extend_from_slice(&[0; 100]);
    std::fs::write(&newest, &zeros).expect("extend");
    let wal = Wal::open(dir.path(), 1 << 20).expect("zeros reopen");
    assert_eq!(read_all(&wal), expected(&[(1, 1..=22)]));
    drop(wal);

    // Unsynced pages written back out of order: a record with a never-written (zero) sector,
    // and a whole record after it that did reach the disk. All of it was unacknowledged.
    let newest = segments(dir.path()).pop().expect("a segment");
    let mut out_of_order = std::fs::read(&newest).expect("read");
    let mut batch = Batch::default();
    for i in 23..=40 {
        let e = entry(1, i);
        batch.push(e.0, &e).expect("encode");
    }
    let at = out_of_order.len();
    out_of_order.extend_from_slice(&batch.buf);
    let sector = (at / 512 + 1) * 512;
    assert!(
        sector + 512 < out_of_order.len() - 100,
        "a whole sector inside the batch"
    );
    out_of_order[sector..sector + 512].fill(0);
    std::fs::write(&newest, &out_of_order).expect("write");
    let wal = Wal::open(dir.path(), 1 << 20).expect("an out-of-order torn tail reopens");
    // The whole records before the zero sector stay (intact, if unacknowledged); the log is
    // cut at the record that holds it, and everything after is gone.
    let kept = read_all(&wal).len() as u64;
    assert!((22..40).contains(&kept), "kept {kept}");
    assert_eq!(read_all(&wal), expected(&[(1, 1..=kept)]));
    drop(wal);

    // A crash while a new segment's first bytes were written leaves part of its magic; the
    // next open writes on in a fresh segment with a whole head.
    let last_id = segments(dir.path()).len() as u64 + 10;
    let next = dir.path().join(format!("{last_id:020}.seg"));
    std::fs::write(&next, &MAGIC[..3]).expect("a torn new segment");
    let mut wal = Wal::open(dir.path(), 1 << 20).expect("a torn new segment reopens");
    assert_eq!(read_all(&wal), expected(&[(1, 1..=kept)]));
    append(&mut wal, 1, [kept + 1]);
    drop(wal);
    let wal = Wal::open(dir.path(), 1 << 20).expect("reopen");
    assert_eq!(read_all(&wal), expected(&[(1, 1..=kept + 1)]));
}

/// The newest segment is allocated ahead of its records; a crash leaves those zeros at its end,
/// which replay drops quietly, and a closed segment never keeps any.
#[test]
fn space_allocated_ahead_is_not_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let segment_bytes = 8 << 10;
    let mut wal = Wal::open(dir.path(), segment_bytes).expect("open");
    append(&mut wal, 1, 1..=5);
    wal.sync().expect("sync");
    let newest = segments(dir.path()).pop().expect("a segment");
    let len = std::fs::metadata(&newest).expect("stat").len();
    assert_eq!(len, segment_bytes, "allocated up to the segment size");
    // A crash: nothing trims the file.
    std::mem::forget(wal);
    let mut wal = Wal::open(dir.path(), segment_bytes).expect("reopen after a crash");
    assert_eq!(read_all(&wal), expected(&[(1, 1..=5)]));
    assert!(
        std::fs::metadata(&newest).expect("stat").len() < 1024,
        "the replayed segment is cut to its records"
    );
    // Enough to roll over several segments: every closed one ends with its last record.
    for i in 6..=400 {
        append(&mut wal, 1, [i]);
    }
    wal.sync().expect("sync");
    drop(wal);
    let files = segments(dir.path());
    assert!(files.len() > 3, "{files:?}");
    for file in &files {
        let bytes = std::fs::read(file).expect("read");
        assert!(bytes.len() as u64 <= segment_bytes + 1024);
        assert_ne!(bytes.last(), Some(&0), "{} ends in zeros", file.display());
    }
    let wal = Wal::open(dir.path(), segment_bytes).expect("reopen");
    assert_eq!(read_all(&wal), expected(&[(1, 1..=400)]));
}

/// The zeros allocated ahead of the newest segment's records are not a torn tail for the
/// records before them: a bad record near the end of what was written, with whole records
/// after it (damage, not a crash), is refused, as it is in a segment that ends with its records.
#[test]
fn damage_before_space_allocated_ahead_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let segment_bytes = 64 << 10;
    let mut wal = Wal::open(dir.path(), segment_bytes).expect("open");
    for i in 1..=30 {
        append(&mut wal, 1, [i]);
    }
    wal.sync().expect("sync");
    let newest = segments(dir.path()).pop().expect("a segment");
    // A crash: nothing trims the file, so the allocated zeros stay after the records.
    std::mem::forget(wal);
    let original = std::fs::read(&newest).expect("read");
    let written_end = original.iter().rposition(|b| *b != 0).expect("records") + 1;
    assert!(
        original.len() > written_end + 4096,
        "allocated ahead: {} bytes of {}",
        written_end,
        original.len()
    );
    // The header of the third record from the end: whole, synced records follow it.
    let mut starts = Vec::new();
    let mut at = MAGIC.len();
    while let Ok((_, body)) = super::parse(&original[at..]) {
        starts.push(at);
        at += super::HEADER as usize + body.len();
    }
    assert_eq!(
        at, written_end,
        "the records end where the written bytes do"
    );
    let damaged_at = starts[starts.len() - 3];
    for (what, flip_at) in [("length", damaged_at), ("checksum", damaged_at + 8)] {
        let mut damaged = original.clone();
        damaged[flip_at] ^= 0x5A;
        std::fs::write(&newest, &damaged).expect("damage");
        match Wal::open(dir.path(), segment_bytes) {
            Err(OpenError::LogDamaged { path, offset, .. }) => {
                assert_eq!(
                    (path, offset),
                    (newest.clone(), damaged_at as u64),
                    "{what}"
                )
            }
            Err(other) => panic!("{what}: wrong error: {other}"),
            Ok(wal) => panic!(
                "{what}: a damaged log opened with {} of 30 entries",
                read_all(&wal).len()
            ),
        }
    }
    // Undamaged, the same file opens with every entry.
    std::fs::write(&newest, &original).expect("restore");
    let wal = Wal::open(dir.path(), segment_bytes).expect("reopen");
    assert_eq!(read_all(&wal), expected(&[(1, 1..=30)]));
}

/// A crash inside a new segment's head leaves the vote only in older segments; the next open
/// starts a segment with a whole head, so purging and deleting the older ones keeps the vote.
#[test]
fn a_torn_segment_head_does_not_lose_the_vote() {
    let dir = tempfile::tempdir().expect("temp dir");
    let vote = Vote::new(5, 3);
    {
        let mut wal = Wal::open(dir.path(), 4096).expect("open");
        wal.save_vote(&vote).expect("vote");
        append(&mut wal, 1, 1..=10);
        wal.sync().expect("sync");
    }
    // The crash came while segment 2's head was being written: only its magic is there.
    std::fs::write(dir.path().join(format!("{:020}.seg", 2)), MAGIC).expect("torn head");
    {
        let mut wal = Wal::open(dir.path(), 4096).expect("reopen");
        // Few enough to stay in the segment written after the reopen.
        for i in 11..=20 {
            append(&mut wal, 1, [i]);
        }
        wal.purge(id(1, 15)).expect("purge");
        wal.sync().expect("sync");
        remove_dead(&mut wal);
    }
    assert!(
        !dir.path().join(format!("{:020}.seg", 1)).exists(),
        "the segment with the vote record is gone"
    );
    let wal = Wal::open(dir.path(), 4096).expect("reopen");
    assert_eq!(wal.vote(), Some(vote));
    assert_eq!(read_all(&wal), expected(&[(1, 16..=20)]));
}

/// Damage that a crash cannot cause (a bad record with good ones after it, a bad older
/// segment, a file that is not a segment) is an error that names the file and offset.
#[test]
fn damage_is_an_error_not_a_reset() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let mut wal = Wal::open(dir.path(), 2048).expect("open");
        for i in 1..=100 {
            append(&mut wal, 1, [i]);
        }
        wal.sync().expect("sync");
    }
    let files = segments(dir.path());
    assert!(files.len() > 2);
    let newest = files.last().expect("newest").clone();
    let original = std::fs::read(&newest).expect("read");

    // One flipped byte in the middle of the newest segment.
    let mut flipped = original.clone();
    let at = MAGIC.len() + (flipped.len() - MAGIC.len()) / 2;
    flipped[at] ^= 0xFF;
    std::fs::write(&newest, &flipped).expect("damage");
    match Wal::open(dir.path(), 2048) {
        Err(OpenError::LogDamaged { path, .. }) => assert_eq!(path, newest),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a damaged log opened"),
    }
    std::fs::write(&newest, &original).expect("restore");

    // The torn-tail rule applies to the newest segment only.
    let older = files[0].clone();
    let mut cut = std::fs::read(&older).expect("read");
    cut.truncate(cut.len() - 3);
    std::fs::write(&older, &cut).expect("cut");
    assert!(matches!(
        Wal::open(dir.path(), 2048),
        Err(OpenError::LogDamaged { .. })
    ));

    std::fs::write(&older, b"not a log segment at all").expect("overwrite");
    assert!(matches!(
        Wal::open(dir.path(), 2048),
        Err(OpenError::LogDamaged { .. })
    ));
}
