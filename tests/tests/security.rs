//! Security across processes: real replicas with mutual TLS and tokens (`Cluster::start_secure`)
//! and the callers a cluster meets. Who may call what (the roles table, a worker acting only
//! for its own node), token revocation and forgery, what a TLS port does with plaintext or a
//! certificate of another CA, certificate rotation without a restart, a restarted replica,
//! the refusal to serve plaintext off loopback, and the message size limit.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use dllm_auth::{
    certs,
    client::ClientAuth,
    policy::{self, Access},
    tls::TlsFiles,
    Role,
};
use dllm_proto::{
    pb::{self, discovery_service_client::DiscoveryServiceClient},
    raft::{raft_service_client::RaftServiceClient, RaftPayload},
};
use dllm_tests::{
    binary, cert_hosts, channel, channel_with, clients, free_port, init_tracing, join_request,
    replica_status, unix_now, wait_for, AuthChannel, ChildProcess, Clients, Cluster, TRUST_DOMAIN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, Status};
use tracing::info;

/// How long a token made for a test lives.
const HOUR: Duration = Duration::from_secs(3600);

/// One representative RPC of each access class of the roles table (and of each class of
/// ExecuteCommand commands), called so that nothing in the cluster changes when it is allowed.
#[derive(Clone, Copy, Debug)]
enum Probe {
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

    async fn call(self, ch: &AuthChannel) -> Result<(), Status> {
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
    let metrics = format!("127.0.0.1:{}", free_port());
    let cluster = Cluster::start_secure(1, &["--metrics-listen", &metrics]);
    cluster.wait_leader(&[1]).await;
    let addr = cluster.addr(1);
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
    let viewer = cluster.auth(Role::Viewer, "watcher");
    let mut own = dllm_tests::clients_with(&viewer, &worker.addr).await;
    own.node
        .get_node_info(pb::NodeInfoRequest::default())
        .await
        .expect("a viewer certificate reads the worker's own API");
    let mut anonymous = dllm_tests::clients_with(&cluster.anonymous(), &worker.addr).await;
    let e = anonymous
        .node
        .get_node_info(pb::NodeInfoRequest::default())
        .await
        .expect_err("the worker's own API without credentials");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
}

/// An operator's token works on every replica until an admin revokes it (ExecuteCommand
/// `token revoke <jti>`); then every replica answers UNAUTHENTICATED for it, while another
/// token of the same holder still works. Only an admin may revoke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_by_every_replica() {
    init_tracing();
    let cluster = Cluster::start_secure(3, &[]);
    cluster.wait_leader(&[1, 2, 3]).await;
    let (revoked, claims) = cluster.token(Role::Operator, "alice", HOUR);
    let (kept, _) = cluster.token(Role::Operator, "alice", HOUR);
    let list = |auth: ClientAuth, id: u64| {
        let addr = cluster.addr(id);
        async move {
            let ch = channel_with(&auth, &addr)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            Clients::over(ch)
                .tui
                .get_node_list(pb::NodeListRequest::default())
                .await
                .map(drop)
        }
    };

    info!("--- the token works on every replica");
    for id in [1, 2, 3] {
        list(cluster.token_auth(&revoked), id)
            .await
            .unwrap_or_else(|e| panic!("the operator token on replica {id}: {e:?}"));
    }

    info!("--- the operator cannot revoke; an admin can");
    let revoke = |auth: ClientAuth| {
        let addr = cluster.addr(2);
        let jti = claims.jti.clone();
        async move {
            dllm_tests::clients_with(&auth, &addr)
                .await
                .tui
                .execute_command(pb::CommandRequest {
                    command: "token".into(),
                    args: vec!["revoke".into(), jti],
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner())
        }
    };
    let e = revoke(cluster.token_auth(&kept))
        .await
        .expect_err("an operator may not revoke tokens");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let answer = revoke(cluster.admin()).await.expect("the admin revokes");
    assert_eq!(answer.exit_code, 0, "revoked: {answer:?}");
    assert!(answer.output.contains(&claims.jti), "{answer:?}");

    info!("--- every replica refuses it; the other token still works");
    let refused = cluster.token_auth(&revoked);
    for id in [1, 2, 3] {
        let e = wait_for(
            &format!("replica {id} to refuse the revoked token"),
            Duration::from_secs(10),
            || {
                let auth = refused.clone();
                async move { list(auth, id).await.err() }
            },
        )
        .await;
        assert_eq!(e.code(), Code::Unauthenticated, "replica {id}: {e:?}");
        assert!(e.message().contains("revoked"), "replica {id}: {e:?}");
        list(cluster.token_auth(&kept), id)
            .await
            .unwrap_or_else(|e| panic!("the unrevoked token on replica {id}: {e:?}"));
    }
}

/// GET /metrics on `addr`: the auth denial counters by reason.
async fn denials(addr: &str) -> BTreeMap<String, u64> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to /metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .expect("request /metrics");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("read /metrics");
    body.lines()
        .filter_map(|l| l.strip_prefix("distributed_llm_auth_denials_total{reason=\""))
        .filter_map(|l| {
            let (reason, rest) = l.split_once("\"}")?;
            Some((reason.to_string(), rest.trim().parse::<f64>().ok()? as u64))
        })
        .collect()
}

/// Waits until every reason in `more` has been counted at least that many times more than
/// in `before`.
async fn wait_denials(
    metrics: &str,
    before: &BTreeMap<String, u64>,
    more: &[(&str, u64)],
) -> BTreeMap<String, u64> {
    wait_for(
        &format!("/metrics to count the denials {more:?} (before: {before:?})"),
        Duration::from_secs(10),
        || async move {
            let now = denials(metrics).await;
            more.iter()
                .all(|(r, n)| now.get(*r).copied().unwrap_or(0) >= before.get(*r).unwrap_or(&0) + n)
                .then_some(now)
        },
    )
    .await
}

/// A second cluster's files (another CA and token key, the same trust domain), in a
/// folder of its own.
fn other_cluster() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    certs::init(dir.path(), &cert_hosts(), 1, TRUST_DOMAIN).expect("another cluster's certs");
    dir
}

/// Forged tokens — expired, for another trust domain, signed by another key, garbage,
/// `alg: none`, and a token claiming the replica role — are each refused UNAUTHENTICATED,
/// counted by reason in `/metrics` (`distributed_llm_auth_denials_total`), and never written
/// to the replica's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_are_refused_counted_and_never_logged() {
    init_tracing();
    let metrics = format!("127.0.0.1:{}", free_port());
    let cluster = Cluster::start_secure(1, &["--metrics-listen", &metrics]);
    cluster.wait_leader(&[1]).await;
    let addr = cluster.addr(1);
    let before = denials(&metrics).await;

    let signer = |dir: &std::path::Path| {
        let pem = std::fs::read(dir.join(certs::JWT_SIGNING_KEY)).expect("signing key");
        dllm_auth::token::Signer::from_pem(&pem).expect("signer")
    };
    let ours = signer(cluster.certs_dir());
    let other = other_cluster();
    let (good, claims) = cluster.token(Role::Admin, "mallory", HOUR);
    let expired = {
        let mut c = claims.clone();
        (c.iat, c.nbf, c.exp) = (unix_now() - 7200, None, unix_now() - 3600);
        ours.sign_claims(&c).expect("sign")
    };
    let (wrong_audience, _) = ours
        .sign("other.test", Role::Admin, "mallory", unix_now(), 3600)
        .expect("sign");
    let (other_key, _) = signer(other.path())
        .sign(TRUST_DOMAIN, Role::Admin, "mallory", unix_now(), 3600)
        .expect("sign");
    // base64url of {"alg":"none","typ":"JWT"}, then the good token's claims, no signature.
    let payload = good.split('.').nth(1).expect("claims");
    let alg_none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    let (replica_role, _) = cluster.token(Role::Replica, "1", HOUR);
    let garbage = "forged-garbage-7f3a9c2e51d04b86".to_string();
    let forged = [
        ("expired", &expired, "token_expired"),
        (
            "another trust domain",
            &wrong_audience,
            "token_wrong_audience",
        ),
        ("another cluster's key", &other_key, "token_bad_signature"),
        ("alg: none", &alg_none, "token_malformed"),
        ("the replica role", &replica_role, "token_malformed"),
        ("garbage", &garbage, "token_malformed"),
    ];

    info!("--- each forgery is refused");
    for (what, token, _) in &forged {
        let ch = channel_with(&cluster.token_auth(token), &addr)
            .await
            .expect("TLS without a certificate connects");
        for probe in [Probe::GetReplicaStatus, Probe::ReadIndex] {
            let e = probe
                .call(&ch)
                .await
                .expect_err(&format!("a token with {what} must be refused ({probe:?})"));
            assert_eq!(e.code(), Code::Unauthenticated, "{what} ({probe:?}): {e:?}");
        }
    }
    Probe::GetReplicaStatus
        .call(
            &channel_with(&cluster.token_auth(&good), &addr)
                .await
                .expect("connect"),
        )
        .await
        .expect("the good token is accepted");

    info!("--- /metrics counts each by reason");
    let mut more: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, _, reason) in &forged {
        *more.entry(reason).or_default() += 2;
    }
    let more: Vec<(&str, u64)> = more.into_iter().collect();
    wait_denials(&metrics, &before, &more).await;

    info!("--- the log names no token");
    let log = std::fs::read_to_string(&cluster.replicas[&1].log).expect("replica log");
    assert!(log.contains("request denied"), "denials are logged");
    for (what, token, _) in forged.iter().chain([&("good", &good, "")]) {
        let signature = token.rsplit('.').next().unwrap_or_default();
        assert!(
            !log.contains(token.as_str()) && (signature.len() < 16 || !log.contains(signature)),
            "the replica log contains the {what} token"
        );
    }
}

/// Connects to `addr` with `auth` and asks for the replica status, within 10 s: `Ok` with the
/// error when the connection failed (at connect, or the call failed in the transport), `Err`
/// when the server answered anything.
async fn connection_fails(auth: &ClientAuth, addr: &str) -> Result<String, String> {
    let attempt = async {
        let ch = match channel_with(auth, addr).await {
            Ok(ch) => ch,
            Err(e) => return Ok(format!("connect: {e}")),
        };
        match Probe::GetReplicaStatus.call(&ch).await {
            Ok(()) => Err("answered OK".to_string()),
            Err(e)
                if std::error::Error::source(&e)
                    .is_some_and(|s| s.downcast_ref::<tonic::transport::Error>().is_some()) =>
            {
                Ok(format!("call: {e:?}"))
            }
            Err(e) => Err(format!("answered {e:?}")),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .map_err(|_| "no outcome in 10 s (hung)".to_string())?
}

/// A TLS port answers plaintext and a client certificate of another CA by failing that
/// connection's handshake (counted as `tls_handshake` in /metrics), not with an answer and
/// not by hanging; the replica keeps serving everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_foreign_certificates_fail_the_handshake() {
    init_tracing();
    let metrics = format!("127.0.0.1:{}", free_port());
    let cluster = Cluster::start_secure(1, &["--metrics-listen", &metrics]);
    cluster.wait_leader(&[1]).await;
    let addr = cluster.addr(1);
    let before = denials(&metrics).await;

    info!("--- plaintext to the TLS port");
    let failed = connection_fails(&ClientAuth::plaintext(), &addr)
        .await
        .unwrap_or_else(|e| panic!("plaintext to the TLS port: {e}"));
    info!(%failed, "plaintext refused");
    wait_denials(&metrics, &before, &[("tls_handshake", 1)]).await;

    info!("--- an admin certificate of another CA (same trust domain)");
    let other = other_cluster();
    let (cert, key) = certs::issue(
        other.path(),
        Role::Admin,
        "intruder",
        TRUST_DOMAIN,
        &cert_hosts(),
    )
    .expect("issue in the other cluster");
    let foreign = ClientAuth::from_flags(
        Some(&cluster.certs_dir().join(certs::CA_CERT)),
        Some(&cert),
        Some(&key),
        None,
    )
    .expect("credentials");
    let before = denials(&metrics).await;
    let failed = connection_fails(&foreign, &addr)
        .await
        .unwrap_or_else(|e| panic!("a certificate of another CA: {e}"));
    info!(%failed, "foreign certificate refused");
    wait_denials(&metrics, &before, &[("tls_handshake", 1)]).await;

    info!("--- the replica still serves");
    assert!(cluster.replicas[&1].pid().is_some(), "replica 1 runs");
    cluster
        .replica_status(1)
        .await
        .unwrap_or_else(|e| panic!("the admin is still answered: {e:?}\n{}", cluster.logs()));
}

/// The certificate a TLS server at `addr` presents to a new connection (DER), as a client
/// trusting `ca` sees it.
async fn served_certificate(addr: &str, ca: &std::path::Path) -> Option<Vec<u8>> {
    let config = dllm_auth::tls::client_config(&TlsFiles {
        ca: ca.to_path_buf(),
        cert: None,
        key: None,
    })
    .expect("client TLS");
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("server name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .ok()?;
    Some(tls.get_ref().1.peer_certificates()?.first()?.to_vec())
}

fn certificate_file(path: &std::path::Path) -> Vec<u8> {
    use rustls_pki_types::{pem::PemObject, CertificateDer};
    CertificateDer::from_pem_file(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_vec()
}

/// Re-issuing a running replica's certificate (a new key, the same file names) takes effect
/// for new connections within a few seconds, with no restart; the replica keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reissued_certificate_is_served_without_a_restart() {
    init_tracing();
    let cluster = Cluster::start_secure(1, &[]);
    cluster.wait_leader(&[1]).await;
    let addr = cluster.addr(1);
    let ca = cluster.certs_dir().join(certs::CA_CERT);
    let file = cluster.certs_dir().join("replica-1.crt");
    let pid = cluster.replicas[&1].pid();

    let old = served_certificate(&addr, &ca)
        .await
        .expect("a TLS handshake with replica 1");
    assert_eq!(
        old,
        certificate_file(&file),
        "replica 1 serves replica-1.crt"
    );

    info!("--- re-issue replica 1's certificate while it runs");
    let (cert, _) = certs::issue(
        cluster.certs_dir(),
        Role::Replica,
        "1",
        TRUST_DOMAIN,
        &cert_hosts(),
    )
    .expect("re-issue");
    assert_eq!(cert, file, "a replica's certificate is renewed in place");
    let new = certificate_file(&file);
    assert_ne!(new, old, "a new certificate");

    info!("--- new connections see it");
    wait_for(
        "replica 1 to present the new certificate",
        Duration::from_secs(10),
        || {
            let (addr, ca, new) = (addr.clone(), ca.clone(), new.clone());
            async move { (served_certificate(&addr, &ca).await? == new).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        cluster.replicas[&1].pid(),
        pid,
        "replica 1 was not restarted"
    );
    cluster
        .replica_status(1)
        .await
        .expect("replica 1 answers over the new certificate");
}

/// A replica stopped with SIGTERM and started again still demands credentials (and still
/// refuses a token revoked before it stopped): restarting does not fall back to plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_still_demands_credentials() {
    init_tracing();
    let mut cluster = Cluster::start_secure(1, &[]);
    cluster.wait_leader(&[1]).await;
    let (revoked, claims) = cluster.token(Role::Viewer, "bob", HOUR);
    let answer = dllm_tests::clients_with(&cluster.admin(), &cluster.addr(1))
        .await
        .tui
        .execute_command(pb::CommandRequest {
            command: "token".into(),
            args: vec!["revoke".into(), claims.jti.clone()],
            ..Default::default()
        })
        .await
        .expect("revoke")
        .into_inner();
    assert_eq!(answer.exit_code, 0, "{answer:?}");

    info!("--- SIGTERM and restart");
    let status = cluster.replica(1).terminate();
    assert!(status.success(), "a clean stop: {status:?}");
    cluster.restart(1);
    cluster.wait_leader(&[1]).await;
    let addr = cluster.addr(1);

    info!("--- it still demands credentials");
    let ch = channel_with(&cluster.anonymous(), &addr)
        .await
        .expect("connect");
    let e = Probe::GetNodeList
        .call(&ch)
        .await
        .expect_err("no credentials after a restart");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    if let Err(answered) = connection_fails(&ClientAuth::plaintext(), &addr).await {
        panic!("plaintext after a restart: {answered}");
    }
    let ch = channel_with(&cluster.token_auth(&revoked), &addr)
        .await
        .expect("connect");
    let e = Probe::GetNodeList
        .call(&ch)
        .await
        .expect_err("the revoked token after a restart");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("revoked"), "{e:?}");
    let (fresh, _) = cluster.token(Role::Viewer, "bob", HOUR);
    let ch = channel_with(&cluster.token_auth(&fresh), &addr)
        .await
        .expect("connect");
    Probe::GetNodeList
        .call(&ch)
        .await
        .expect("a good token after a restart");
}

/// `dllm-control-plane` on a non-loopback address without TLS exits non-zero, saying to
/// give TLS or `--insecure`; with `--insecure` it starts and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_off_loopback_needs_insecure() {
    init_tracing();
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let here = format!("127.0.0.1:{port}");
    let args = |data: &str| -> Vec<String> {
        [
            "--id",
            "1",
            "--listen",
            &format!("0.0.0.0:{port}"),
            "--advertise",
            &here,
            "--initial-cluster",
            &format!("1={here}"),
            "--data-dir",
            &dir.path().join(data).display().to_string(),
        ]
        .map(String::from)
        .to_vec()
    };

    info!("--- without TLS or --insecure: refused");
    let mut child = Command::new(binary("dllm-control-plane"))
        .args(args("refused"))
        .env_remove("DLLM_INSECURE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dllm-control-plane");
    let status = wait_for(
        "dllm-control-plane to refuse to start",
        Duration::from_secs(15),
        || {
            let exited = child.try_wait().expect("wait");
            async move { exited }
        },
    )
    .await;
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(!status.success(), "it exits non-zero: {status:?}\n{stderr}");
    assert!(
        stderr.contains("--insecure"),
        "the error names --insecure: {stderr}"
    );

    info!("--- with --insecure: it serves");
    let mut cmd = Command::new(binary("dllm-control-plane"));
    cmd.args(args("insecure")).arg("--insecure");
    let mut insecure = ChildProcess::spawn("insecure replica", cmd, dir.path().join("cp.log"));
    wait_for(
        "the --insecure replica to answer",
        Duration::from_secs(30),
        || {
            let here = here.clone();
            async move { replica_status(&here).await.ok() }
        },
    )
    .await;
    assert!(insecure.is_running(), "it keeps running");
    insecure.kill();
}

/// A request over the 4 MiB message limit (tonic's default decode limit) is answered
/// RESOURCE_EXHAUSTED, compressed or not; one just under it reaches validation; the replica
/// keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_request_is_resource_exhausted() {
    init_tracing();
    let cluster = Cluster::start(1, &[]);
    cluster.wait_leader(&[1]).await;
    let addr = cluster.addr(1);
    let with_address = |bytes: usize| {
        let mut request = join_request("big", 1);
        request.address = "x".repeat(bytes);
        request
    };
    const MIB: usize = 1 << 20;

    info!("--- 5 MiB, uncompressed and gzip");
    let mut plain = DiscoveryServiceClient::new(channel(&addr).await.expect("connect"));
    let e = plain
        .register_with_cluster(with_address(5 * MIB))
        .await
        .expect_err("5 MiB uncompressed");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let mut gzip = clients(&addr).await;
    let e = gzip
        .discovery
        .register_with_cluster(with_address(5 * MIB))
        .await
        .expect_err("5 MiB gzip");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");

    info!("--- just under the limit: an ordinary validation error");
    let e = plain
        .register_with_cluster(with_address(4 * MIB - 1024))
        .await
        .expect_err("an address of 4 MiB is not an address");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    info!("--- the replica still serves");
    plain
        .register_with_cluster(join_request("small", 1))
        .await
        .expect("an ordinary registration");
}
