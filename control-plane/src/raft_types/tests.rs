//! Unit tests of the state as openraft's application data: commands through log entries.

use openraft::LogId;

use super::*;
use crate::state::{test_support::spec, Command};

/// A command travels the log as bytes: through an entry's encoding and back it is the same
/// command, and applying it through the store's hook does what applying the command does.
#[test]
fn encoded_commands_round_trip_through_log_entries() {
    use dllm_storage::AppData;
    use openraft::{CommittedLeaderId, Entry, EntryPayload};

    let command = Command::Once {
        request_id: 7,
        command: Box::new(Command::RegisterNode {
            spec: spec("a", 1000),
            now_ms: 10,
        }),
    };
    let entry: Entry<TypeConfig> = Entry {
        log_id: LogId::new(CommittedLeaderId::new(2, 1), 5),
        payload: EntryPayload::Normal(EncodedCommand::encode(&command).expect("encode")),
    };
    let bytes = bincode::serialize(&entry).expect("encode entry");
    let back: Entry<TypeConfig> = bincode::deserialize(&bytes).expect("decode entry");
    let EntryPayload::Normal(encoded) = back.payload else {
        panic!("not a normal entry");
    };
    assert_eq!(encoded.decode().expect("decode"), command);

    let mut state = ClusterState::default();
    let outcome = AppData::apply(&mut state, &back.log_id, encoded);
    assert_eq!(outcome, Outcome::Registered { created: true });
    assert!(state.nodes.contains_key("a"));

    // Bytes that are not a command are answered the same on every replica, not a panic.
    let garbage = bincode::deserialize::<EncodedCommand>(
        &bincode::serialize(&EncodedCommand::encode(&command).expect("encode")).expect("encode")
            [..12],
    );
    assert!(garbage.is_err(), "a cut entry does not decode");
}

/// An entry an older version wrote (the command itself as payload) is re-encoded on its way
/// out of an old sled log and reads back as the same command; blank and membership entries
/// stay what they were.
#[test]
fn legacy_entries_are_upgraded() {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, Membership};

    let command = Command::RegisterNode {
        spec: spec("b", 2000),
        now_ms: 20,
    };
    let log_id = LogId::new(CommittedLeaderId::new(3, 2), 9);
    let old: Entry<legacy::Legacy> = Entry {
        log_id,
        payload: EntryPayload::Normal(command.clone()),
    };
    let upgraded =
        legacy::upgrade_entry(&bincode::serialize(&old).expect("encode")).expect("upgrade");
    let new: Entry<TypeConfig> = bincode::deserialize(&upgraded).expect("decode");
    assert_eq!(new.log_id, log_id);
    let EntryPayload::Normal(encoded) = new.payload else {
        panic!("not a normal entry");
    };
    assert_eq!(encoded.decode().expect("decode"), command);

    let members = std::collections::BTreeMap::from([(1u64, openraft::BasicNode::new("a:1"))]);
    let old: Entry<legacy::Legacy> = Entry {
        log_id,
        payload: EntryPayload::Membership(Membership::new(vec![[1u64].into()], members)),
    };
    let new: Entry<TypeConfig> = bincode::deserialize(
        &legacy::upgrade_entry(&bincode::serialize(&old).expect("encode")).expect("upgrade"),
    )
    .expect("decode");
    assert!(matches!(new.payload, EntryPayload::Membership(_)));
    assert!(legacy::upgrade_entry(b"not an entry").is_err());
}
