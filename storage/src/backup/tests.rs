//! The backup file format: what is written reads back, and every kind of damage is refused
//! with its own error.

use super::*;

fn header() -> BackupHeader {
    BackupHeader {
        cluster_id: Some("c0ffee".into()),
        last_index: 1234,
        last_term: 7,
        saved_by: 2,
        saved_at_ms: 1_700_000_000_000,
        counts: vec![("nodes".into(), 3), ("models".into(), 1)],
    }
}

fn file() -> (Vec<u8>, Vec<u8>) {
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    (encode(&header(), &data), data)
}

/// A file decodes to exactly the header and state it was made from, and its checksum is
/// the SHA-256 of everything before it.
#[test]
fn round_trip() {
    let (bytes, data) = file();
    let decoded = decode(&bytes).expect("a fresh file decodes");
    assert_eq!(decoded.header, header());
    assert_eq!(decoded.data, data);
    assert_eq!(
        decoded.checksum.as_slice(),
        Sha256::digest(&bytes[..bytes.len() - 32]).as_slice()
    );
    assert_eq!(decoded.checksum_hex().len(), 64);
    let empty = encode(&BackupHeader::default(), &[]);
    assert_eq!(decode(&empty).expect("empty state").data, Vec::<u8>::new());
}

/// Every proper prefix of a file is refused: as truncated, never as a file with less in it.
#[test]
fn truncated_files_are_refused() {
    let (bytes, _) = file();
    for cut in [
        0,
        3,
        8,
        12,
        15,
        16,
        40,
        bytes.len() / 2,
        bytes.len() - 33,
        bytes.len() - 1,
    ] {
        let err = decode(&bytes[..cut]).expect_err("a prefix must not decode");
        assert!(
            matches!(err, BackupError::Truncated { .. }),
            "cut at {cut} of {}: {err}",
            bytes.len()
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        decode(&longer),
        Err(BackupError::Trailing { extra: 1 })
    ));
}

/// Flipping any one bit is caught: in the magic as a foreign file, in the version as an
/// unknown version, in a length as a size mismatch, anywhere else by the checksum.
#[test]
fn a_flipped_bit_anywhere_is_refused() {
    let (bytes, _) = file();
    for at in (0..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x10;
        let err = decode(&damaged).expect_err("a damaged file must not decode");
        let expected = match at {
            0..8 => matches!(err, BackupError::Foreign),
            8..12 => matches!(err, BackupError::Version { .. }),
            _ => matches!(
                err,
                BackupError::Checksum { .. }
                    | BackupError::Truncated { .. }
                    | BackupError::Trailing { .. }
            ),
        };
        assert!(expected, "byte {at}: {err}");
    }
}

/// Another program's file, or an empty one, is not a dllm snapshot; a newer format version
/// is named in the refusal.
#[test]
fn foreign_files_and_other_versions_are_refused() {
    for foreign in [&b"SQLite format 3\0 and more bytes here"[..], b"{}", b"x"] {
        let err = decode(foreign).expect_err("foreign");
        assert!(matches!(err, BackupError::Foreign), "{err}");
        assert!(
            err.to_string().contains("not a dllm snapshot file"),
            "{err}"
        );
    }
    assert!(matches!(decode(b""), Err(BackupError::Truncated { .. })));
    let (mut bytes, _) = file();
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    let err = decode(&bytes).expect_err("version 2");
    assert!(matches!(err, BackupError::Version { found: 2 }), "{err}");
    assert!(err.to_string().contains("version 2"), "{err}");
}

/// A length field claiming more than the file holds (or than a u64 can) is a size mismatch,
/// checked before anything is allocated or hashed.
#[test]
fn lengths_beyond_the_file_are_refused() {
    let (bytes, _) = file();
    let mut huge_header = bytes.clone();
    huge_header[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        decode(&huge_header),
        Err(BackupError::Truncated { .. })
    ));
    let header_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let mut huge_data = bytes.clone();
    huge_data[16 + header_len..24 + header_len].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        decode(&huge_data),
        Err(BackupError::Truncated { .. })
    ));
}
