//! Who may call what: every role against the roles table, and a worker acting only for its
//! own node.

use super::*;

/// One representative RPC of each access class of the roles table (and of each class of
/// ExecuteCommand commands), called so that nothing in the cluster changes when it is allowed.
#[derive(Clone, Copy, Debug)]
pub(super) enum Probe {
    /// grpc.health.v1 Check: open to anyone.
    Health,
    GetNodeList,
    GetReplicaStatus,
    DiscoverNodes,
    /// Registers [`MATRIX_NODE`].
    Register,
    /// Leaves [`MATRIX_NODE`].
    Leave,
    /// id 0: refused as INVALID_ARGUMENT when allowed.
    AddReplica,
    /// id 99, not a member: NOT_FOUND when allowed.
    RemoveReplica,
    /// A backup of the whole state, read to the end.
    SaveSnapshot,
    /// ExecuteCommand with this command and arguments.
    Command(&'static str, &'static [&'static str]),
    /// RaftService ReadIndex with an empty payload (bincode of `()`).
    ReadIndex,
}

/// The node id the matrix registers and leaves: the worker callers' own.
const MATRIX_NODE: &str = "w-matrix";

const PROBES: &[Probe] = &[
    Probe::Health,
    Probe::GetNodeList,
    Probe::GetReplicaStatus,
    Probe::DiscoverNodes,
    Probe::Register,
    Probe::Leave,
    Probe::AddReplica,
    Probe::RemoveReplica,
    Probe::SaveSnapshot,
    Probe::Command("nodes", &[]),
    Probe::Command("drain", &["x"]),
    Probe::Command("member", &["remove", "99"]),
    Probe::ReadIndex,
];

impl Probe {
    fn path(self) -> &'static str {
        match self {
            Probe::Health => "/grpc.health.v1.Health/Check",
            Probe::GetNodeList => "/distributed_llm.TUIService/GetNodeList",
            Probe::GetReplicaStatus => "/distributed_llm.AdminService/GetReplicaStatus",
            Probe::DiscoverNodes => "/distributed_llm.DiscoveryService/DiscoverNodes",
            Probe::Register => "/distributed_llm.DiscoveryService/RegisterWithCluster",
            Probe::Leave => "/distributed_llm.DiscoveryService/LeaveCluster",
            Probe::AddReplica => "/distributed_llm.AdminService/AddReplica",
            Probe::RemoveReplica => "/distributed_llm.AdminService/RemoveReplica",
            Probe::SaveSnapshot => "/distributed_llm.AdminService/SaveSnapshot",
            Probe::Command(..) => "/distributed_llm.TUIService/ExecuteCommand",
            Probe::ReadIndex => "/distributed_llm.raft.RaftService/ReadIndex",
        }
    }

    /// What an allowed caller may be told besides OK (the probes are chosen to change
    /// nothing).
    fn harmless_refusals(self) -> &'static [Code] {
        match self {
            Probe::AddReplica => &[Code::InvalidArgument],
            Probe::RemoveReplica => &[Code::NotFound],
            Probe::Leave => &[Code::NotFound],
            _ => &[],
        }
    }

    pub(super) async fn call(self, ch: &AuthChannel) -> Result<(), Status> {
        let mut c = Clients::over(ch.clone());
        match self {
            Probe::Health => tonic_health::pb::health_client::HealthClient::new(ch.clone())
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .map(drop),
            Probe::GetNodeList => c
                .tui
                .get_node_list(pb::NodeListRequest::default())
                .await
                .map(drop),
            Probe::GetReplicaStatus => c
                .admin
                .get_replica_status(pb::ReplicaStatusRequest {})
                .await
                .map(drop),
            Probe::DiscoverNodes => c
                .discovery
                .discover_nodes(pb::DiscoveryRequest::default())
                .await
                .map(drop),
            Probe::Register => c
                .discovery
                .register_with_cluster(join_request(MATRIX_NODE, 1))
                .await
                .map(drop),
            Probe::Leave => c
                .discovery
                .leave_cluster(pb::ClusterLeaveRequest {
                    node_id: MATRIX_NODE.into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            Probe::AddReplica => c
                .admin
                .add_replica(pb::AddReplicaRequest {
                    id: 0,
                    address: "127.0.0.1:1".into(),
                })
                .await
                .map(drop),
            Probe::RemoveReplica => c
                .admin
                .remove_replica(pb::RemoveReplicaRequest { id: 99 })
                .await
                .map(drop),
            Probe::SaveSnapshot => {
                let mut chunks = c
                    .admin
                    .save_snapshot(pb::SaveSnapshotRequest {})
                    .await?
                    .into_inner();
                while chunks.message().await?.is_some() {}
                Ok(())
            }
            Probe::Command(command, args) => c
                .tui
                .execute_command(pb::CommandRequest {
                    command: command.into(),
                    args: args.iter().map(|a| a.to_string()).collect(),
                    ..Default::default()
                })
                .await
                .map(drop),
            // bincode::serialize(&()) is no bytes at all.
            Probe::ReadIndex => RaftServiceClient::new(ch.clone())
                .read_index(RaftPayload { data: Vec::new() })
                .await
                .map(drop),
        }
    }
}

/// What the roles table says a caller with `role` (`None`: no credentials) gets from `probe`.
#[derive(Debug, PartialEq)]
enum Expect {
    Allowed,
    Unauthenticated,
    /// PERMISSION_DENIED naming these roles.
    Denied(String),
}

fn expect(probe: Probe, role: Option<Role>) -> Expect {
    let access = policy::access(probe.path())
        .unwrap_or_else(|| panic!("{} is not in the roles table", probe.path()));
    let Access::Roles(roles) = access else {
        return Expect::Allowed;
    };
    let Some(role) = role else {
        return Expect::Unauthenticated;
    };
    if !roles.contains(&role) {
        return Expect::Denied(policy::names(roles));
    }
    if let Probe::Command(command, _) = probe {
        let needed = policy::command_roles(command);
        if !needed.contains(&role) {
            return Expect::Denied(policy::names(needed));
        }
    }
    Expect::Allowed
}

/// A caller of the matrix.
struct Caller {
    label: String,
    role: Option<Role>,
    auth: ClientAuth,
}

/// For every role (by certificate, and by token for the roles tokens may carry) and for a
/// caller with no credentials, one RPC of each access class on every replica of a secure
/// cluster answers as `dllm_auth::policy` says: UNAUTHENTICATED without credentials,
/// PERMISSION_DENIED naming the roles needed when the role may not, and never either when it
/// may. The probes cover every access class of the table and every class of commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_reaches_exactly_what_the_roles_table_gives_it() {
    init_tracing();

    info!("--- the probes cover the table, and the table says what the issue says");
    let classes: BTreeSet<String> = policy::TABLE
        .iter()
        .map(|(_, access)| format!("{access:?}"))
        .collect();
    let probed: BTreeSet<String> = PROBES
        .iter()
        .filter_map(|p| policy::access(p.path()))
        .filter(|a| *a != Access::Public)
        .map(|a| format!("{a:?}"))
        .collect();
    assert_eq!(probed, classes, "one probe per access class of the table");
    let commands: BTreeSet<&[Role]> = PROBES
        .iter()
        .filter_map(|p| match p {
            Probe::Command(c, _) => Some(policy::command_roles(c)),
            _ => None,
        })
        .collect();
    assert_eq!(
        commands,
        BTreeSet::from([policy::READERS, policy::OPERATORS, policy::ADMINS]),
        "one command per class of commands"
    );
    let denied = |p, r| matches!(expect(p, r), Expect::Denied(_));
    assert!(
        denied(Probe::ReadIndex, Some(Role::Admin)),
        "Raft is for replicas only"
    );
    assert!(
        denied(Probe::GetNodeList, Some(Role::Replica)),
        "replicas read nothing"
    );
    assert!(
        denied(Probe::Register, Some(Role::Operator)),
        "only workers register"
    );
    assert!(
        denied(Probe::AddReplica, Some(Role::Operator)),
        "membership is admin"
    );
    assert!(
        denied(Probe::SaveSnapshot, Some(Role::Operator)),
        "a backup holds the whole state: admin"
    );
    assert!(denied(Probe::Command("drain", &["x"]), Some(Role::Viewer)));
    assert!(denied(Probe::Command("member", &[]), Some(Role::Operator)));
    assert_eq!(expect(Probe::Leave, Some(Role::Operator)), Expect::Allowed);
    assert_eq!(
        expect(Probe::Health, None),
        Expect::Allowed,
        "probes need no identity"
    );

    let cluster = Cluster::start_secure(3, &[]);
    cluster.wait_leader(&[1, 2, 3]).await;
    let mut callers = vec![Caller {
        label: "no credentials".into(),
        role: None,
        auth: cluster.anonymous(),
    }];
    for role in Role::ALL {
        let name = match role {
            Role::Worker => MATRIX_NODE.to_string(),
            Role::Replica => "1".to_string(),
            _ => format!("matrix-{role}"),
        };
        callers.push(Caller {
            label: format!("{role} (certificate)"),
            role: Some(role),
            auth: cluster.auth(role, &name),
        });
        if role != Role::Replica {
            let (token, _) = cluster.token(role, &name, HOUR);
            callers.push(Caller {
                label: format!("{role} (token)"),
                role: Some(role),
                auth: cluster.token_auth(&token),
            });
        }
    }

    for id in [1, 2, 3] {
        info!("--- every caller against replica {id}");
        let addr = cluster.addr(id);
        for caller in &callers {
            let ch = channel_with(&caller.auth, &addr)
                .await
                .unwrap_or_else(|e| panic!("{} connects to replica {id}: {e}", caller.label));
            for probe in PROBES {
                let got = probe.call(&ch).await;
                let what = format!("{} calling {probe:?} on replica {id}", caller.label);
                match expect(*probe, caller.role) {
                    Expect::Allowed => {
                        if let Err(e) = &got {
                            assert!(
                                probe.harmless_refusals().contains(&e.code()),
                                "{what}: allowed by the table, answered {e:?}\n{}",
                                cluster.logs()
                            );
                        }
                    }
                    Expect::Unauthenticated => {
                        let e = got.expect_err(&format!("{what}: must be refused"));
                        assert_eq!(e.code(), Code::Unauthenticated, "{what}: {e:?}");
                    }
                    Expect::Denied(needed) => {
                        let e = got.expect_err(&format!("{what}: must be refused"));
                        assert_eq!(e.code(), Code::PermissionDenied, "{what}: {e:?}");
                        assert!(
                            e.message().contains(&needed),
                            "{what}: the refusal names the roles needed ({needed}): {e:?}"
                        );
                    }
                }
            }
        }
    }
}

/// A worker's certificate (or token) for `w1` cannot register, heartbeat or leave as `w2`
/// (PERMISSION_DENIED naming node_id, counted in /metrics as `other_node`, and `w2` is
/// untouched), but can for `w1`; an operator
/// can make any node leave. A real `dllm-worker` with its certificate joins and stays healthy,
/// and its own port asks callers for a certificate too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_acts_only_for_its_own_node() {
    init_tracing();
    let (cluster, metrics, addr) = one_secure_replica().await;
    let before = denials(&metrics).await;
    let connect = |auth: ClientAuth| {
        let addr = addr.clone();
        async move { dllm_tests::clients_with(&auth, &addr).await }
    };
    let mut w1 = connect(cluster.auth(Role::Worker, "w1")).await;
    let mut w2 = connect(cluster.auth(Role::Worker, "w2")).await;
    let (token, _) = cluster.token(Role::Worker, "w1", HOUR);
    let mut w1_token = connect(cluster.token_auth(&token)).await;
    let mut operator = connect(cluster.auth(Role::Operator, "ops")).await;

    info!("--- each worker registers itself");
    for (c, id) in [(&mut w1, "w1"), (&mut w2, "w2")] {
        c.discovery
            .register_with_cluster(join_request(id, 1))
            .await
            .unwrap_or_else(|e| panic!("{id} registers itself: {e:?}"));
    }

    info!("--- w1 (certificate and token) cannot act for w2");
    for (how, c) in [("certificate", &mut w1), ("token", &mut w1_token)] {
        let refusals = [
            (
                "register",
                c.discovery
                    .register_with_cluster(join_request("w2", 4))
                    .await
                    .map(drop),
            ),
            (
                "heartbeat",
                c.discovery
                    .heartbeat(pb::HeartbeatRequest {
                        node_id: "w2".into(),
                        usage: None,
                    })
                    .await
                    .map(drop),
            ),
            (
                "leave",
                c.discovery
                    .leave_cluster(pb::ClusterLeaveRequest {
                        node_id: "w2".into(),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
        ];
        for (what, got) in refusals {
            let e = got.expect_err(&format!("w1 by {how} must not {what} as w2"));
            assert_eq!(
                e.code(),
                Code::PermissionDenied,
                "{what} as w2 by {how}: {e:?}"
            );
            assert!(
                e.message().contains("node_id") && e.message().contains("w2"),
                "the refusal names the field and the node: {e:?}"
            );
        }
    }
    wait_denials(&metrics, &before, &[("other_node", 6)]).await;
    let w2_node = operator
        .node
        .get_node_info(pb::NodeInfoRequest {
            node_id: "w2".into(),
        })
        .await
        .expect("GetNodeInfo w2")
        .into_inner()
        .node
        .expect("w2 is known");
    assert_ne!(w2_node.status, "left", "w2 did not leave");
    assert_eq!(
        w2_node.resources.expect("resources").gpus.len(),
        1,
        "w2 keeps its own registration, not the 4 GPUs w1 claimed for it"
    );

    info!("--- w1 heartbeats and leaves as itself");
    w1.discovery
        .heartbeat(pb::HeartbeatRequest {
            node_id: "w1".into(),
            usage: None,
        })
        .await
        .expect("w1 heartbeats as itself");
    w1_token
        .discovery
        .heartbeat(pb::HeartbeatRequest {
            node_id: "w1".into(),
            usage: None,
        })
        .await
        .expect("w1 heartbeats as itself with its token");
    w1.discovery
        .leave_cluster(pb::ClusterLeaveRequest {
            node_id: "w1".into(),
            ..Default::default()
        })
        .await
        .expect("w1 leaves as itself");

    info!("--- an operator makes w2 leave");
    operator
        .discovery
        .leave_cluster(pb::ClusterLeaveRequest {
            node_id: "w2".into(),
            reason: "decommissioned".into(),
        })
        .await
        .expect("an operator may make any node leave");
    let status = |c: &Clients<AuthChannel>, id: &'static str| {
        let mut node = c.node.clone();
        async move {
            node.get_node_info(pb::NodeInfoRequest { node_id: id.into() })
                .await
                .expect("GetNodeInfo")
                .into_inner()
                .node
                .expect("known")
                .status
        }
    };
    assert_eq!(status(&operator, "w1").await, "left", "w1 left");
    assert_eq!(
        status(&operator, "w2").await,
        "left",
        "w2 was made to leave"
    );

    info!("--- a dllm-worker process with its certificate");
    let worker = cluster.start_worker("w3", "1x81559:NVIDIA H100 80GB HBM3", &[]);
    wait_for(
        "the w3 worker to join and be healthy",
        Duration::from_secs(30),
        || {
            let mut node = operator.node.clone();
            async move {
                let n = node
                    .get_node_info(pb::NodeInfoRequest {
                        node_id: "w3".into(),
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .node?;
                (n.status == "healthy").then_some(())
            }
        },
    )
    .await;
    // A client that expects a replica (as workers and replicas do) refuses a worker's
    // certificate: a worker cannot pose as the control plane.
    let viewer = cluster.auth(Role::Viewer, "watcher");
    let posing = viewer
        .connect_to(&worker.addr, Duration::from_secs(2))
        .await
        .expect_err("a worker's certificate where a replica's is expected");
    let chain = format!("{:?}", posing);
    assert!(chain.contains("not a replica"), "{chain}");
    let viewer = viewer.serving(&[Role::Worker]);
    let mut own = dllm_tests::clients_with(&viewer, &worker.addr).await;
    own.node
        .get_node_info(pb::NodeInfoRequest::default())
        .await
        .expect("a viewer certificate reads the worker's own API");
    let anonymous = cluster.anonymous().serving(&[Role::Worker]);
    let mut anonymous = dllm_tests::clients_with(&anonymous, &worker.addr).await;
    let e = anonymous
        .node
        .get_node_info(pb::NodeInfoRequest::default())
        .await
        .expect_err("the worker's own API without credentials");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
}

/// A replica certificate opens RaftService only while its id is a member: once replica 3 is
/// removed, its certificate (still signed by the CA and unexpired) is refused every Raft
/// method, as is a replica certificate for an id that was never added; a member's works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_replicas_certificate_opens_no_raft_method() {
    init_tracing();
    let cluster = Cluster::start_secure(3, &[]);
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let survivor = if leader == 3 { 1 } else { leader };
    let addr = cluster.addr(survivor);
    let read_index = |name: &'static str| {
        let (auth, addr) = (cluster.auth(Role::Replica, name), addr.clone());
        async move {
            let ch = channel_with(&auth, &addr).await.expect("connect");
            Probe::ReadIndex.call(&ch).await
        }
    };

    info!("--- a member's certificate may call RaftService");
    read_index("3")
        .await
        .unwrap_or_else(|e| panic!("replica 3, a member, is refused: {e:?}"));

    info!("--- replica 3 removed");
    clients_with(&cluster.admin(), &addr)
        .await
        .admin
        .remove_replica(pb::RemoveReplicaRequest { id: 3 })
        .await
        .unwrap_or_else(|e| panic!("remove replica 3: {e:?}\n{}", cluster.logs()));
    wait_for(
        "replica 3 refused by the survivor",
        Duration::from_secs(20),
        || async {
            match read_index("3").await {
                Err(e) if e.code() == Code::PermissionDenied => Some(()),
                _ => None,
            }
        },
    )
    .await;
    let refused = read_index("3").await.expect_err("a removed replica");
    assert!(
        refused.message().contains("not a member"),
        "the refusal says why: {refused:?}"
    );
    let never = read_index("9").await.expect_err("a replica never added");
    assert_eq!(never.code(), Code::PermissionDenied, "{never:?}");
    let other = if survivor == 1 { "2" } else { "1" };
    read_index(other)
        .await
        .unwrap_or_else(|e| panic!("replica {other}, still a member, is refused: {e:?}"));
}
