//! Tokens: revocation replicated to every replica, and forged tokens refused, counted and
//! never logged.

use super::*;

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

/// Forged tokens — expired, for another trust domain, signed by another key, garbage,
/// `alg: none`, and a token claiming the replica role — are each refused UNAUTHENTICATED,
/// counted by reason in `/metrics` (`distributed_llm_auth_denials_total`), and never written
/// to the replica's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_are_refused_counted_and_never_logged() {
    init_tracing();
    let (cluster, metrics, addr) = one_secure_replica().await;
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
