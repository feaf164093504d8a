//! The NodeService answers a replica and a worker build alike from the nodes they found.

use dllm_proto::{pb, server::answer};

/// The `GetNodeInfo` answer for `node`.
pub fn node_info_answer(node: pb::NodeInfo) -> tonic::Response<pb::NodeInfoResponse> {
    answer(pb::NodeInfoResponse {
        message: format!("node {} is {}", node.node_id, node.status),
        node: Some(node),
        success: true,
    })
}

/// The `GetPeers` answer listing `peers`.
pub fn peers_answer(peers: Vec<pb::NodeInfo>) -> tonic::Response<pb::PeersResponse> {
    answer(pb::PeersResponse {
        total_count: peers.len() as i32,
        peers,
    })
}
