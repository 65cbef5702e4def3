//! Refusals: the wrong CA, an expired certificate, an agency that is not the
//! certificate's, a resource of another agency. Each is refused with a
//! clear error and nothing is stored.

use std::time::Duration;

use pki::dev::{Ca, Validity};

use crate::*;

/// Runs an agent with `spec` against a hub until its link error matches
/// `expect`, and checks the hub stored nothing.
async fn refused(w: &World, hub: &Hub, spec: AgentSpec, expect: &[&str]) -> String {
    w.drop_file("drop/people", "a.csv", people_csv(0..10).as_bytes());
    let agent = Agent::start(&w.agent_toml(&spec)).await;
    // The link error and the folder's commit race each other: wait for both.
    let error = eventually("the link error, with the file queued", Duration::from_secs(30), || {
        let s = agent.status();
        match &s.link.error {
            Some(e) if expect.iter().all(|x| e.contains(x)) && s.queue.records == 10 => Ok(e.clone()),
            _ => Err(format!("{:?} {:?}", s.link, s.queue)),
        }
    })
    .await;
    assert_eq!(agent.status().link.acked, 0);
    assert_eq!(agent.status().queue.records, 10, "the records stay queued");
    agent.stop().await;
    let _ = hub;
    assert!(export(&w.store_path(), true).is_empty(), "nothing is stored");
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_a_hub_from_another_ca() {
    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    let other = Ca::new("some other CA").unwrap();
    let mut spec = w.agent_spec(hub.addr.port());
    spec.ca = w.write("pki/other-ca.pem", &other.cert_pem());
    refused(&w, &hub, spec, &["handshake", "UnknownIssuer"]).await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_refuses_a_certificate_from_another_ca() {
    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    let other = Ca::new("some other CA").unwrap();
    let c = other.issue_agency(GAJ, Validity::default()).unwrap();
    let mut spec = w.agent_spec(hub.addr.port());
    spec.cert = w.write("pki/foreign.pem", &c.cert_pem);
    spec.key = w.write("pki/foreign.key", &c.key_pem);
    refused(&w, &hub, spec, &["UnknownCA"]).await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_refuses_an_expired_certificate() {
    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    let (cert, key) = w.issue(
        GAJ,
        Validity {
            from_days: -30,
            to_days: -1,
        },
        "expired",
    );
    let mut spec = w.agent_spec(hub.addr.port());
    spec.cert = cert;
    spec.key = key;
    refused(&w, &hub, spec, &["CertificateExpired"]).await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_refuses_an_agency_that_is_not_the_certificates() {
    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    let mut spec = w.agent_spec(hub.addr.port());
    spec.cert = w.path(&format!("pki/{SCJGJ}.pem"));
    spec.key = w.path(&format!("pki/{SCJGJ}.key"));
    let e = refused(&w, &hub, spec, &["permission", SCJGJ, GAJ]).await;
    assert!(e.contains("certificate is for agency"), "{e}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_rejects_a_resource_of_another_agency_into_the_quarantine() {
    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    // The agent's own catalog wrongly claims the legal-person resource.
    let claimed = CATALOG.replacen("provider = \"320282-scjgj\"", "provider = \"320282-gaj\"", 1);
    let mut spec = w.agent_spec(hub.addr.port());
    spec.catalog = w.write("agent-catalog.toml", &claimed);
    spec.sources =
        "[[source]]\nname = \"firms\"\ntype = \"folder\"\nresource = \"2010100/0001\"\npath = \"drop/firms\"\n\
                    [source.columns]\n\"代码\" = \"DE00101\"\n\"名称\" = \"DE00102\"\n"
            .into();
    let agent = Agent::start(&w.agent_toml(&spec)).await;
    w.drop_file(
        "drop/firms",
        "f.csv",
        "代码,名称\n91320282MA1P4Q7RXF,宜兴某公司\n91350100M000100Y43,另一公司\n".as_bytes(),
    );
    eventually("both records rejected", Duration::from_secs(30), || {
        let s = agent.status();
        (s.link.rejected == 2 && s.quarantine == 2 && s.queue.records == 0)
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;
    let q = agent.running.outbox.read(|r| r.quarantine(10)).await.unwrap();
    assert_eq!(q.len(), 2);
    for e in &q {
        assert_eq!((e.object.as_str(), e.resource.as_str()), ("f.csv", "2010100/0001"));
        assert!(
            e.reasons[0].starts_with("HUB_NOT_PROVIDER") && e.reasons[0].contains(SCJGJ),
            "{:?}",
            e.reasons
        );
    }
    assert!(export(&w.store_path(), true).is_empty(), "nothing is stored");
    agent.stop().await;
    hub.stop().await;
}
