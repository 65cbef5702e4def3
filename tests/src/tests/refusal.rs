//! Refusals: the wrong CA, an expired certificate, an agency that is not the
//! certificate's, a resource of another agency. Each is refused with a
//! clear error and nothing is stored. And `qianzhi check` (the real binary)
//! meets each certificate problem before `run` does, in `run`'s words.

use std::time::{Duration, Instant};

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

/// `qianzhi check` with `spec` (its drop folder made): exit code and output.
async fn check(w: &World, spec: &AgentSpec) -> (Option<i32>, String) {
    std::fs::create_dir_all(w.path("drop/people")).unwrap();
    let config = w.agent_toml(spec);
    tokio::task::spawn_blocking(move || super::operator::check(&config, &[]))
        .await
        .unwrap()
}

/// The one line of `text` that starts with `start`.
fn line<'a>(text: &'a str, start: &str) -> &'a str {
    let mut found = text.lines().filter(|l| l.starts_with(start));
    match (found.next(), found.next()) {
        (Some(l), None) => l,
        _ => panic!("not one line starting with {start:?} in:\n{text}"),
    }
}

/// Check's verdict (ok or FAIL) on `what`, the whole line.
fn judged<'a>(text: &'a str, what: &str) -> &'a str {
    let mut found = text
        .lines()
        .filter(|l| !l.starts_with("WARN") && l.get(6..).is_some_and(|rest| rest.starts_with(what)));
    match (found.next(), found.next()) {
        (Some(l), None) => l,
        _ => panic!("not one verdict on {what:?} in:\n{text}"),
    }
}

/// The start of check's line on the session with the hub.
fn hub_line(spec: &AgentSpec, verdict: &str) -> String {
    format!(
        "{verdict}hub https://localhost:{}: session as {}",
        spec.hub_port, spec.agency
    )
}

/// The start of check's line on the client certificate.
fn cert_line(spec: &AgentSpec, verdict: &str, agency: &str) -> String {
    format!(
        "{verdict}client certificate {} (agency {agency}, valid ",
        spec.cert.display()
    )
}

/// What `run`'s link says with `spec`: the error of its first refused
/// session.
async fn run_says(w: &World, spec: &AgentSpec) -> String {
    let agent = Agent::start(&w.agent_toml(spec)).await;
    let error = eventually("the link's error", Duration::from_secs(30), || {
        agent
            .status()
            .link
            .error
            .ok_or_else(|| format!("{:?}", agent.status().link))
    })
    .await;
    agent.stop().await;
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_opens_a_session_with_the_right_certificate_and_takes_over_nothing() {
    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    let spec = w.agent_spec(hub.addr.port());
    // The agency's agent runs: check must not take its session over.
    let agent = Agent::start(&w.agent_toml(&spec)).await;
    eventually("the link up", Duration::from_secs(30), || {
        let link = agent.status().link;
        (link.state == agent::health::LinkState::Up)
            .then_some(())
            .ok_or(format!("{link:?}"))
    })
    .await;
    let (up_before, since) = (agent.status().link.since_seconds, Instant::now());

    let (code, text) = check(&w, &spec).await;
    assert_eq!(code, Some(0), "{text}");
    line(&text, &cert_line(&spec, "ok    ", GAJ));
    assert_eq!(judged(&text, &hub_line(&spec, "")), hub_line(&spec, "ok    "), "{text}");

    // Still the same session: up at least as long as the check took (the
    // time taken before the status is read, so never more than it shows).
    let took = since.elapsed().as_secs_f64();
    let link = agent.status().link;
    assert_eq!(link.state, agent::health::LinkState::Up, "{link:?}");
    assert!(link.since_seconds + 0.01 >= up_before + took, "{link:?}");
    agent.stop().await;
    assert!(export(&w.store_path(), true).is_empty(), "check stored nothing");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_another_agencys_certificate_before_connecting_and_shows_the_hubs_refusal() {
    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    let mut spec = w.agent_spec(hub.addr.port());
    spec.cert = w.path(&format!("pki/{SCJGJ}.pem"));
    spec.key = w.path(&format!("pki/{SCJGJ}.key"));

    let (code, text) = check(&w, &spec).await;
    assert_eq!(code, Some(1), "{text}");
    // Which is which, and where each comes from.
    let cert = line(&text, &cert_line(&spec, "FAIL  ", SCJGJ));
    assert!(
        cert.contains(&format!(
            "the certificate {SCJGJ}.pem is for agency {SCJGJ}, but agency = \"{GAJ}\" in {}:1: ",
            w.path("agent.toml").display()
        )),
        "{text}"
    );
    // The hub's verdict, in the words run logs.
    let session = line(&text, &hub_line(&spec, "FAIL  "));
    let verdict = format!(
        "hub refused: The caller does not have permission to execute the specified operation: the client \
         certificate is for agency {SCJGJ}, but the agent says it is agency {GAJ}"
    );
    assert_eq!(session, format!("{}: {verdict}", hub_line(&spec, "FAIL  ")));
    assert!(text.find(cert) < text.find(session), "the mismatch comes first: {text}");
    assert_eq!(run_says(&w, &spec).await, verdict);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_shows_the_hubs_refusal_of_a_certificate_from_another_ca() {
    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    // Another CA, and one with the very name of the hub's (a second
    // `pki dev`): the hub cannot place the first, and finds the second's
    // signature wrong.
    for (ca, alert) in [("some other CA", "UnknownCA"), ("Qianzhi test CA", "DecryptError")] {
        let other = Ca::new(ca).unwrap().issue_agency(GAJ, Validity::default()).unwrap();
        let mut spec = w.agent_spec(hub.addr.port());
        spec.cert = w.write("pki/foreign.pem", &other.cert_pem);
        spec.key = w.write("pki/foreign.key", &other.key_pem);

        let (code, text) = check(&w, &spec).await;
        assert_eq!(code, Some(1), "{text}");
        line(&text, &cert_line(&spec, "ok    ", GAJ));
        let verdict = format!(
            "tls handshake with the hub failed: the hub refused this agent's certificate: received fatal alert: {alert}"
        );
        assert_eq!(
            judged(&text, &hub_line(&spec, "")),
            format!("{}: {verdict}", hub_line(&spec, "FAIL  ")),
            "{text}"
        );
        assert_eq!(run_says(&w, &spec).await, verdict);
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_a_certificate_out_of_date_with_its_dates_and_warns_before_it_expires() {
    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    let spec_for = |from_days, to_days, name| {
        let (cert, key) = w.issue(GAJ, Validity { from_days, to_days }, name);
        AgentSpec {
            cert,
            key,
            ..w.agent_spec(hub.addr.port())
        }
    };
    // The certificate's dates as check prints them (RFC 3339, UTC).
    let dates = |spec: &AgentSpec| {
        let c = pki::identity::read(&spec.cert).unwrap();
        let at = |s: i64| humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(s as u64));
        (at(c.not_before).to_string(), at(c.not_after).to_string())
    };
    let refused = "tls handshake with the hub failed: the hub refused this agent's certificate: received fatal alert: \
                   CertificateExpired";

    let spec = spec_for(-30, -1, "expired");
    let (code, text) = check(&w, &spec).await;
    assert_eq!(code, Some(1), "{text}");
    let cert = line(&text, &cert_line(&spec, "FAIL  ", GAJ));
    let (from, until) = dates(&spec);
    assert!(
        cert.contains(&format!("valid {from} to {until}): expired at {until} ")),
        "{text}"
    );
    assert!(line(&text, &hub_line(&spec, "FAIL  ")).ends_with(refused), "{text}");

    let spec = spec_for(2, 30, "future");
    let (code, text) = check(&w, &spec).await;
    assert_eq!(code, Some(1), "{text}");
    let cert = line(&text, &cert_line(&spec, "FAIL  ", GAJ));
    let (from, until) = dates(&spec);
    assert!(
        cert.contains(&format!("valid {from} to {until}): not valid before {from} ")),
        "{text}"
    );
    assert!(cert.contains("check the clock"), "{text}");
    assert!(line(&text, &hub_line(&spec, "FAIL  ")).ends_with(refused), "{text}");
    assert!(
        !text.contains("expires at"),
        "no warning of the expiry of what is not valid yet: {text}"
    );

    let spec = spec_for(-1, 10, "soon");
    let (code, text) = check(&w, &spec).await;
    assert_eq!(code, Some(0), "{text}");
    line(&text, &cert_line(&spec, "ok    ", GAJ));
    let (_, until) = dates(&spec);
    let expiring = format!("): expires at {until} (in ");
    let warning = text
        .lines()
        .find(|l| l.starts_with(&cert_line(&spec, "WARN  ", GAJ)) && l.contains(&expiring))
        .unwrap_or_else(|| panic!("no warning of the expiry: {text}"));
    // Ten days from its making, less the moment since: 9 days and some
    // hours, or 10 when made within the same second.
    assert!(
        warning.contains("(in 9 days)") || warning.contains("(in 10 days)"),
        "{text}"
    );
    line(&text, &hub_line(&spec, "ok    "));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_a_hub_this_agent_cannot_trust() {
    let w = World::new();
    let hub = Hub::start(&w, 0).await;
    let port = hub.addr.port();
    let other = Ca::new("some other CA").unwrap();
    let twin = Ca::new("Qianzhi test CA").unwrap();
    let cases = [
        (
            Some(other.cert_pem()),
            "",
            "invalid peer certificate: UnknownIssuer".to_owned(),
        ),
        (
            Some(twin.cert_pem()),
            "",
            "invalid peer certificate: BadSignature".to_owned(),
        ),
        (
            None,
            "server_name = \"hub.example.gov.cn\"\n",
            "invalid peer certificate: certificate not valid for name \"hub.example.gov.cn\"; certificate is only \
             valid for DnsName(\"localhost\") or IpAddress(127.0.0.1)"
                .to_owned(),
        ),
    ];
    for (ca, hub_extra, error) in cases {
        let mut spec = w.agent_spec(port);
        if let Some(ca) = ca {
            spec.ca = w.write("pki/other-ca.pem", &ca);
        }
        spec.hub_extra.push_str(hub_extra);
        let (code, text) = check(&w, &spec).await;
        assert_eq!(code, Some(1), "{text}");
        let verdict = format!("tls handshake with the hub failed: {error}");
        assert_eq!(
            judged(&text, &hub_line(&spec, "")),
            format!("{}: {verdict}", hub_line(&spec, "FAIL  ")),
            "{text}"
        );
    }
    hub.stop().await;
}
