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
