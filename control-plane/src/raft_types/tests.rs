//! Unit tests of the state as openraft's application data: commands through log entries.

use openraft::LogId;

use super::*;
use crate::state::{Command, Gpu, NodeSpec, Resources};

fn spec(id: &str, memory_mb: i64) -> NodeSpec {
    NodeSpec {
        node_id: id.to_string(),
        address: "10.0.0.1".to_string(),
        port: 9000,
        resources: Resources {
            cpu_cores: 8,
            memory_mb,
            gpus: vec![Gpu {
                name: "NVIDIA H100 80GB HBM3".to_string(),
                memory_mb: 81559,
                uuid: format!("GPU-{id}"),
            }],
            max_layers: 40,
        },
    }
}

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
