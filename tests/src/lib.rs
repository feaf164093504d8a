//! Harness for cross-process tests: start the real `dllm-control-plane` binary as child
//! processes on free loopback ports with fresh data directories, kill, pause, restart and
//! stop them, and talk to them with the generated gRPC clients.
//!
//! Binaries are looked up next to the test executable's target directory (what
//! `cargo test --workspace` builds), or in `DLLM_BIN_DIR` when set.
//!
//! [`Cluster::start_secure`] starts a cluster with mutual TLS and tokens: a fresh CA and
//! certificates from `dllm_auth::certs`, every replica given its own certificate, and
//! [`Cluster::auth`] / [`Cluster::token`] to make callers of any role.

use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::Mutex,
    time::Duration,
};

use dllm_auth::{certs, client::ClientAuth, token::Claims, Role};

use dllm_proto::pb::{
    self, admin_service_client::AdminServiceClient,
    discovery_service_client::DiscoveryServiceClient, node_service_client::NodeServiceClient,
    tui_service_client::TuiServiceClient,
};
use nix::{sys::signal::Signal, unistd::Pid};
use tonic::{codec::CompressionEncoding, transport::Channel};

pub mod jepsen;

/// Path of a workspace binary such as `dllm-control-plane`.
///
/// # Panics
/// When the binary has not been built.
pub fn binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("DLLM_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("test executable path");
            // target/<profile>/deps/<test> -> target/<profile>
            exe.parent()
                .and_then(Path::parent)
                .expect("target directory")
                .to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo test --workspace` (which builds it) or `cargo build --bins`",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1 (bound once, then released for the child to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process of the test, killed when dropped.
pub struct ChildProcess {
    /// A name for messages.
    pub name: String,
    /// Its log file (stdout and stderr).
    pub log: PathBuf,
    child: Option<Child>,
}

impl ChildProcess {
    /// Starts `cmd` with its output appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        Self {
            name: name.to_string(),
            log,
            child: Some(child),
        }
    }

    /// The OS process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running (started and not yet reaped).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// How the process ended, once it has (`None` while it runs or after a kill).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(self.child.as_ref().expect("running").id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal the process");
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs the process and waits (up to 20 s) for it to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        let mut child = self.child.take().expect("running");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not exit within 20 s of SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of its log, for assertion messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One control-plane replica process.
pub struct Replica {
    /// Raft id.
    pub id: u64,
    /// host:port it serves on.
    pub addr: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    /// ip:port of its `--metrics-listen`, for a cluster started with
    /// [`Cluster::start_with_metrics`].
    pub metrics: Option<String>,
    process: Option<ChildProcess>,
}

impl Replica {
    /// The OS process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(ChildProcess::pid)
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(|p| p.is_running())
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        self.process.as_ref().expect("running").signal(signal);
    }

    /// How the process ended, once it has exited on its own.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.process.as_mut().and_then(ChildProcess::exit_status)
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// SIGTERMs the process and waits for it to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.process.take().expect("running").terminate()
    }

    /// The last lines of its log, for assertion messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// The trust domain of the clusters [`Cluster::start_secure`] starts (not the default one,
/// so that `--trust-domain` is exercised).
pub const TRUST_DOMAIN: &str = "dllm.test";

/// The host names every certificate of a secure test cluster is valid for.
pub fn cert_hosts() -> Vec<String> {
    vec!["127.0.0.1".to_string(), "localhost".to_string()]
}

/// A secure cluster's certificate folder, and which role each certificate in it was issued
/// for (certificate files are named after their holder only, so one name serves one role).
struct Certs {
    dir: PathBuf,
    issued: Mutex<BTreeMap<String, Role>>,
}

impl Certs {
    /// The certificate and key of `role`/`name`, issued on first use.
    fn files(&self, role: Role, name: &str) -> (PathBuf, PathBuf) {
        let stem = certs::file_stem(role, name);
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        match issued.get(&stem) {
            Some(had) => assert_eq!(
                *had, role,
                "the certificate name {stem:?} is already used by a {had} in this cluster"
            ),
            None => {
                certs::issue(&self.dir, role, name, TRUST_DOMAIN, &cert_hosts())
                    .unwrap_or_else(|e| panic!("issue a certificate for {role}/{name}: {e}"));
                issued.insert(stem.clone(), role);
            }
        }
        (
            self.dir.join(format!("{stem}.crt")),
            self.dir.join(format!("{stem}.key")),
        )
    }

    /// `--tls-ca`, `--tls-cert`, `--tls-key` and `--trust-domain` for a server holding
    /// `role`/`name`'s certificate.
    fn server_flags(&self, role: Role, name: &str) -> Vec<String> {
        let (cert, key) = self.files(role, name);
        let ca = self.dir.join(certs::CA_CERT);
        vec![
            "--tls-ca".to_string(),
            ca.display().to_string(),
            "--tls-cert".to_string(),
            cert.display().to_string(),
            "--tls-key".to_string(),
            key.display().to_string(),
            "--trust-domain".to_string(),
            TRUST_DOMAIN.to_string(),
        ]
    }
}

/// A control-plane cluster of child processes.
pub struct Cluster {
    /// The replicas by id.
    pub replicas: BTreeMap<u64, Replica>,
    initial_cluster: String,
    dir: tempfile::TempDir,
    extra_args: Vec<String>,
    /// Set for a cluster started with [`Cluster::start_secure`].
    certs: Option<Certs>,
    /// Every replica serves `--metrics-listen` on a port of its own.
    metrics: bool,
}

impl Cluster {
    /// Starts `n` founding replicas (ids 1..=n) with `extra_args` passed to each.
    pub fn start(n: u64, extra_args: &[&str]) -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir"), n, extra_args)
    }

    /// Like [`Cluster::start`], with mutual TLS and tokens: a new CA, replica certificates
    /// and token key in `<dir>/certs` (`dllm_auth::certs::init` for 127.0.0.1 and localhost,
    /// trust domain [`TRUST_DOMAIN`]), and every replica started (and restarted) with its own
    /// `--tls-ca`/`--tls-cert`/`--tls-key` and `--jwt-public-key`.
    pub fn start_secure(n: u64, extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs_dir = dir.path().join("certs");
        certs::init(&certs_dir, &cert_hosts(), n as u32, TRUST_DOMAIN)
            .unwrap_or_else(|e| panic!("certs init: {e}"));
        let certs = Certs {
            dir: certs_dir,
            issued: Mutex::new(
                (1..=n)
                    .map(|id| {
                        (
                            certs::file_stem(Role::Replica, &id.to_string()),
                            Role::Replica,
                        )
                    })
                    .collect(),
            ),
        };
        Self::start_with(dir, n, extra_args, Some(certs))
    }

    /// Like [`Cluster::start`], with data and logs in `dir`.
    pub fn start_in(dir: tempfile::TempDir, n: u64, extra_args: &[&str]) -> Self {
        Self::start_with(dir, n, extra_args, None)
    }

    /// Like [`Cluster::start`], each replica serving `--metrics-listen` on a free port of its
    /// own ([`Replica::metrics`]), kept across restarts.
    pub fn start_with_metrics(n: u64, extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut cluster, members) = Self::empty(dir, n, extra_args, None);
        cluster.metrics = true;
        cluster.start_founders(members);
        cluster
    }

    fn start_with(
        dir: tempfile::TempDir,
        n: u64,
        extra_args: &[&str],
        certs: Option<Certs>,
    ) -> Self {
        let (mut cluster, members) = Self::empty(dir, n, extra_args, certs);
        cluster.start_founders(members);
        cluster
    }

    fn start_founders(&mut self, members: BTreeMap<u64, String>) {
        for (id, addr) in members {
            self.add_process(id, addr, true);
        }
    }

    /// A cluster of `n` founding replicas on free ports, none started yet, and their
    /// addresses by id.
    fn empty(
        dir: tempfile::TempDir,
        n: u64,
        extra_args: &[&str],
        certs: Option<Certs>,
    ) -> (Self, BTreeMap<u64, String>) {
        let members: BTreeMap<u64, String> = (1..=n)
            .map(|id| (id, format!("127.0.0.1:{}", free_port())))
            .collect();
        let initial_cluster = members
            .iter()
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect::<Vec<_>>()
            .join(",");
        let cluster = Self {
            replicas: BTreeMap::new(),
            initial_cluster,
            dir,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            certs,
            metrics: false,
        };
        (cluster, members)
    }

    fn add_process(&mut self, id: u64, addr: String, founding: bool) {
        let data_dir = self.dir.path().join(format!("cp{id}"));
        let log = self.dir.path().join(format!("cp{id}.log"));
        let mut replica = Replica {
            id,
            addr,
            data_dir,
            log,
            metrics: self.metrics.then(|| format!("127.0.0.1:{}", free_port())),
            process: None,
        };
        self.spawn(&mut replica, founding, &[]);
        self.replicas.insert(id, replica);
    }

    fn spawn(&self, replica: &mut Replica, founding: bool, extra_args: &[&str]) {
        let mut cmd = Command::new(binary("dllm-control-plane"));
        cmd.arg("--id")
            .arg(replica.id.to_string())
            .arg("--listen")
            .arg(&replica.addr)
            .arg("--data-dir")
            .arg(&replica.data_dir)
            .args(&self.extra_args)
            .args(replica.metrics.iter().flat_map(|m| ["--metrics-listen", m]))
            .args(extra_args)
            .env("RUST_LOG", "info,openraft=info");
        if let Some(certs) = &self.certs {
            cmd.args(certs.server_flags(Role::Replica, &replica.id.to_string()))
                .arg("--jwt-public-key")
                .arg(certs.dir.join(certs::JWT_PUBLIC_KEY));
        }
        if founding {
            cmd.arg("--initial-cluster").arg(&self.initial_cluster);
        }
        replica.process = Some(ChildProcess::spawn(
            &format!("replica {}", replica.id),
            cmd,
            replica.log.clone(),
        ));
    }

    /// Comma-separated addresses of every replica, for `--seed-nodes`.
    pub fn seeds(&self) -> String {
        self.replicas
            .values()
            .map(|r| r.addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts a `dllm-worker` named `node_id` with simulated GPUs `gpus` (none when empty),
    /// joined through every replica; in a secure cluster with a worker certificate for
    /// `node_id`.
    pub fn start_worker(&self, node_id: &str, gpus: &str, extra_args: &[&str]) -> Worker {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(binary("dllm-worker"));
        cmd.args([
            "--node-id",
            node_id,
            "--listen",
            &addr,
            "--seed-nodes",
            &self.seeds(),
        ])
        .args(extra_args)
        .env("RUST_LOG", "info");
        if let Some(certs) = &self.certs {
            // The worker's certificate is its identity: spiffe://<domain>/worker/<node_id>.
            cmd.args(certs.server_flags(Role::Worker, node_id));
        }
        if !gpus.is_empty() {
            cmd.args(["--simulate-gpus", gpus]);
        }
        let log = self.dir.path().join(format!("worker-{node_id}.log"));
        Worker {
            node_id: node_id.to_string(),
            addr,
            process: ChildProcess::spawn(&format!("worker {node_id}"), cmd, log),
        }
    }

    /// Starts a new replica `id` that is not a founding member; it waits to be added.
    pub fn start_joiner(&mut self, id: u64) -> String {
        let addr = format!("127.0.0.1:{}", free_port());
        self.add_process(id, addr.clone(), false);
        addr
    }

    /// Restarts a stopped replica on its old address and data directory.
    pub fn restart(&mut self, id: u64) {
        self.restart_with(id, &[]);
    }

    /// Like [`Cluster::restart`], with `extra_args` added for this start only (e.g.
    /// `--force-new-cluster`).
    pub fn restart_with(&mut self, id: u64, extra_args: &[&str]) {
        let mut replica = self.replicas.remove(&id).expect("known replica");
        assert!(!replica.is_running(), "replica {id} is still running");
        let founding = self
            .initial_cluster
            .contains(&format!("{id}={}", replica.addr));
        self.spawn(&mut replica, founding, extra_args);
        self.replicas.insert(id, replica);
    }

    /// The replica with `id`.
    pub fn replica(&mut self, id: u64) -> &mut Replica {
        self.replicas.get_mut(&id).expect("known replica")
    }

    /// Address of replica `id`.
    pub fn addr(&self, id: u64) -> String {
        self.replicas[&id].addr.clone()
    }

    /// Waits until every running replica in `among` reports the same leader, which is itself
    /// one of `among`, and returns its id.
    pub async fn wait_leader(&self, among: &[u64]) -> u64 {
        let among = among.to_vec();
        wait_for(
            "a leader agreed on by the replicas",
            Duration::from_secs(30),
            || {
                let among = among.clone();
                let addrs: Vec<String> = among.iter().map(|id| self.addr(*id)).collect();
                async move {
                    let mut seen = None;
                    for addr in addrs {
                        let status = self.status_at(&addr).await.ok()?;
                        if status.leader_id == 0 || seen.is_some_and(|l| l != status.leader_id) {
                            return None;
                        }
                        seen = Some(status.leader_id);
                    }
                    seen.filter(|l| among.contains(l))
                }
            },
        )
        .await
    }

    /// The folder holding every replica's data and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until replica `id` answers status, then returns its address.
    pub async fn wait_up(&self, id: u64) -> String {
        let addr = self.addr(id);
        wait_for(
            &format!("replica {id} to answer"),
            Duration::from_secs(30),
            || {
                let addr = addr.clone();
                async move { self.status_at(&addr).await.ok().map(|_| ()) }
            },
        )
        .await;
        addr
    }

    /// AdminService.GetReplicaStatus on replica `id`, with [`Cluster::admin`]'s credentials.
    pub async fn replica_status(
        &self,
        id: u64,
    ) -> Result<pb::ReplicaStatusResponse, tonic::Status> {
        self.status_at(&self.addr(id)).await
    }

    async fn status_at(&self, addr: &str) -> Result<pb::ReplicaStatusResponse, tonic::Status> {
        match &self.certs {
            Some(_) => replica_status_with(&self.admin(), addr).await,
            None => replica_status(addr).await,
        }
    }

    /// Whether the cluster was started with [`Cluster::start_secure`].
    pub fn is_secure(&self) -> bool {
        self.certs.is_some()
    }

    fn secure(&self) -> &Certs {
        self.certs
            .as_ref()
            .expect("a cluster started with Cluster::start_secure")
    }

    /// The certificate folder of a secure cluster (`ca.crt`, `replica-<id>.crt`, ...).
    ///
    /// # Panics
    /// When the cluster is not secure.
    pub fn certs_dir(&self) -> &Path {
        &self.secure().dir
    }

    /// TLS against the cluster CA with a client certificate for `role`/`name` (issued on
    /// first use; `Role::Replica` with a replica's id is that replica's own certificate).
    ///
    /// # Panics
    /// When the cluster is not secure, or `name` already names a holder of another role.
    pub fn auth(&self, role: Role, name: &str) -> ClientAuth {
        let certs = self.secure();
        let (cert, key) = certs.files(role, name);
        ClientAuth::from_flags(
            Some(&certs.dir.join(certs::CA_CERT)),
            Some(&cert),
            Some(&key),
            None,
        )
        .unwrap_or_else(|e| panic!("client credentials for {role}/{name}: {e}"))
    }

    /// TLS against the cluster CA, presenting `token` and no certificate.
    ///
    /// # Panics
    /// When the cluster is not secure.
    pub fn token_auth(&self, token: &str) -> ClientAuth {
        ClientAuth::from_flags(
            Some(&self.certs_dir().join(certs::CA_CERT)),
            None,
            None,
            Some(token),
        )
        .unwrap_or_else(|e| panic!("client credentials with a token: {e}"))
    }

    /// TLS against the cluster CA with no certificate and no token.
    ///
    /// # Panics
    /// When the cluster is not secure.
    pub fn anonymous(&self) -> ClientAuth {
        ClientAuth::from_flags(
            Some(&self.certs_dir().join(certs::CA_CERT)),
            None,
            None,
            None,
        )
        .unwrap_or_else(|e| panic!("client credentials without identity: {e}"))
    }

    /// Credentials that may do anything a client may: plaintext for a plain cluster, an
    /// `admin` certificate for a secure one.
    pub fn admin(&self) -> ClientAuth {
        match &self.certs {
            Some(_) => self.auth(Role::Admin, "test-admin"),
            None => ClientAuth::plaintext(),
        }
    }

    /// A token for `role`/`subject` valid for `ttl`, signed with the cluster's
    /// `jwt-signing.key`; the token and its claims (`jti` to revoke it).
    ///
    /// # Panics
    /// When the cluster is not secure.
    pub fn token(&self, role: Role, subject: &str, ttl: Duration) -> (String, Claims) {
        let pem = std::fs::read(self.certs_dir().join(certs::JWT_SIGNING_KEY))
            .expect("the token signing key");
        dllm_auth::token::Signer::from_pem(&pem)
            .and_then(|s| s.sign(TRUST_DOMAIN, role, subject, unix_now(), ttl.as_secs()))
            .unwrap_or_else(|e| panic!("sign a token for {role}/{subject}: {e}"))
    }

    /// Log tails of every replica, for assertion messages.
    pub fn logs(&self) -> String {
        self.replicas
            .values()
            .map(|r| format!("--- replica {} ---\n{}", r.id, r.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One `dllm-worker` process.
pub struct Worker {
    /// Its node id.
    pub node_id: String,
    /// host:port of its own gRPC API.
    pub addr: String,
    /// The process.
    pub process: ChildProcess,
}

/// A channel to `addr` that fails fast when nothing listens.
pub async fn channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(15))
        .connect()
        .await
}

/// The clients of every public service on one replica, speaking gzip both ways; over a
/// plain tonic channel ([`clients`]) or one with credentials ([`clients_with`]).
pub struct Clients<T = Channel> {
    /// NodeService.
    pub node: NodeServiceClient<T>,
    /// DiscoveryService.
    pub discovery: DiscoveryServiceClient<T>,
    /// TUIService.
    pub tui: TuiServiceClient<T>,
    /// AdminService.
    pub admin: AdminServiceClient<T>,
}

/// Connects [`Clients`] to `addr`.
pub async fn clients(addr: &str) -> Clients {
    let ch = channel(addr).await.expect("connect to the replica");
    Clients::over(ch)
}

/// A channel to `addr` with `auth`'s TLS and token, failing fast when nothing listens.
pub async fn channel_with(
    auth: &ClientAuth,
    addr: &str,
) -> Result<AuthChannel, tonic::transport::Error> {
    let endpoint = auth
        .endpoint(addr)?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(15));
    auth.connect(endpoint).await
}

/// A channel made by [`channel_with`].
pub type AuthChannel = dllm_proto::client::Channel;

/// Connects [`Clients`] to `addr` with `auth`'s credentials.
///
/// # Panics
/// When the connection (or its TLS handshake) fails.
pub async fn clients_with(auth: &ClientAuth, addr: &str) -> Clients<AuthChannel> {
    let ch = channel_with(auth, addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    Clients::over(ch)
}

/// AdminService.GetReplicaStatus on `addr` with `auth`'s credentials.
pub async fn replica_status_with(
    auth: &ClientAuth,
    addr: &str,
) -> Result<pb::ReplicaStatusResponse, tonic::Status> {
    let ch = channel_with(auth, addr)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    AdminServiceClient::new(ch)
        .get_replica_status(pb::ReplicaStatusRequest {})
        .await
        .map(|r| r.into_inner())
}

/// Seconds since the Unix epoch, as tokens count time.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

impl<T> Clients<T>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    /// The four clients over `ch`, speaking gzip both ways.
    pub fn over(ch: T) -> Self {
        let gz = CompressionEncoding::Gzip;
        Clients {
            node: NodeServiceClient::new(ch.clone())
                .send_compressed(gz)
                .accept_compressed(gz),
            discovery: DiscoveryServiceClient::new(ch.clone())
                .send_compressed(gz)
                .accept_compressed(gz),
            tui: TuiServiceClient::new(ch.clone())
                .send_compressed(gz)
                .accept_compressed(gz),
            admin: AdminServiceClient::new(ch)
                .send_compressed(gz)
                .accept_compressed(gz),
        }
    }
}

/// AdminService.GetReplicaStatus on `addr`.
pub async fn replica_status(addr: &str) -> Result<pb::ReplicaStatusResponse, tonic::Status> {
    let ch = channel(addr)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    AdminServiceClient::new(ch)
        .get_replica_status(pb::ReplicaStatusRequest {})
        .await
        .map(|r| r.into_inner())
}

/// Control-plane flags that make failure detection fast for tests: heartbeats every 200 ms,
/// unhealthy after 3 missed (600 ms), offline after 8 (1.6 s), 1 s grace after a failover.
pub const FAST_LIVENESS: &[&str] = &[
    "--node-heartbeat-interval-ms",
    "200",
    "--unhealthy-after",
    "3",
    "--offline-after",
    "8",
    "--failover-grace-ms",
    "1000",
];

/// The ids of every member node (`GetPeers` with `include_self`) as the replica at `addr`
/// answers, through a linearizable read.
///
/// # Panics
/// When the replica does not answer.
pub async fn member_ids(addr: &str) -> std::collections::HashSet<String> {
    let mut c = clients(addr).await;
    c.node
        .get_peers(pb::PeersRequest {
            include_self: true,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("GetPeers on {addr}: {e}"))
        .into_inner()
        .peers
        .into_iter()
        .map(|n| n.node_id)
        .collect()
}

/// Registers a one-GPU node named `{prefix}{i}` for each `i` in `range` through `c`, in order,
/// each within the request budget; returns the names, every one acknowledged. A refusal or a
/// hang panics with `cluster`'s logs.
pub async fn register_all(
    c: &mut Clients,
    cluster: &Cluster,
    prefix: &str,
    range: std::ops::Range<usize>,
) -> Vec<String> {
    let mut acked = Vec::new();
    for i in range {
        let id = format!("{prefix}{i}");
        match tokio::time::timeout(
            Duration::from_secs(10),
            c.discovery.register_with_cluster(join_request(&id, 1)),
        )
        .await
        {
            Ok(Ok(_)) => acked.push(id),
            Ok(Err(e)) => panic!("register {id}: {e}\n{}", cluster.logs()),
            Err(_) => panic!("register {id}: no answer in 10 s\n{}", cluster.logs()),
        }
    }
    acked
}

/// A registration for a simulated worker.
pub fn join_request(node_id: &str, gpus: usize) -> pb::ClusterJoinRequest {
    pb::ClusterJoinRequest {
        node_id: node_id.to_string(),
        address: "127.0.0.1".to_string(),
        port: 9000,
        resources: Some(pb::ResourceInfo {
            cpu_cores: 16,
            memory_mb: 65536,
            gpus: (0..gpus)
                .map(|i| pb::GpuInfo {
                    name: "NVIDIA H100 80GB HBM3".to_string(),
                    memory_mb: 81559,
                    uuid: format!("GPU-{node_id}-{i}"),
                })
                .collect(),
            max_layers: 40,
            used_layers: 0,
        }),
        seed_nodes: vec![],
        skip_existing_nodes: false,
    }
}

/// Runs the built `dllm` with `--endpoints endpoints` and `args`, to its end.
///
/// # Panics
/// When it cannot be started.
pub fn dllm_at(endpoints: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(binary("dllm"))
        .args(["--endpoints", endpoints])
        .args(args)
        .output()
        .expect("run dllm")
}

/// Installs a test log subscriber once (RUST_LOG respected).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}
