//! DNS (`--dns-listen`) on a real cluster: `APP.berth` lists the healthy instances'
//! IPs and follows a scale, `INDEX.APP.berth` / `INSTANCE.APP.berth` name one
//! instance, `_APP._tcp.berth` gives SRV records with the app's port, unknown names
//! are NXDOMAIN, other zones REFUSED, garbage is dropped, TCP works; queries built
//! with hickory-proto, and with `dig` when it is installed (CI installs it).

mod support;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use serde_json::json;
use support::{free_port, served_app, Cluster};

fn query(addr: &str, name: &str, kind: RecordType) -> Message {
    let mut m = Message::new();
    m.set_id(4242).set_message_type(MessageType::Query).set_op_code(OpCode::Query).set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.send_to(&m.to_vec().unwrap(), addr).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).expect("an answer");
    let reply = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(reply.id(), 4242);
    reply
}

fn a_records(m: &Message) -> BTreeSet<Ipv4Addr> {
    m.answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

async fn healthy_ips(c: &Cluster, n: usize) -> BTreeSet<Ipv4Addr> {
    c.eventually(Duration::from_secs(30), "healthy instances", || async {
        let (_, list) = c.get(1, "/v1/instances?app=web").await;
        let list = list.as_array()?.clone();
        let ips: BTreeSet<Ipv4Addr> = list
            .iter()
            .filter(|i| i["health"] == "healthy" && i["state"] == "running")
            .filter_map(|i| i["ip"].as_str()?.parse().ok())
            .collect();
        (ips.len() == n && list.len() == n).then_some(ips)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_and_instances_resolve_and_follow_a_scale() {
    let port = free_port();
    let c =
        Cluster::start_each(
            3,
            |id| if id == 2 { vec!["--dns-listen".into(), format!("127.0.0.1:{port}")] } else { vec![] },
        );
    let dns = format!("127.0.0.1:{port}");
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    c.create_pool(leader, "lan", 81).await;
    let spec = served_app("web", 2, "lan");
    let (s, v) = c.req(1, reqwest::Method::PUT, "/v1/apps/web", Some(spec), None).await;
    assert_eq!(s, 201, "{v}");
    let ips = healthy_ips(&c, 2).await;

    // The replica answers; it may be a moment behind the API's linearizable read.
    let d = dns.clone();
    let want = ips.clone();
    c.eventually(Duration::from_secs(10), "web.berth lists both", || {
        let (d, want) = (d.clone(), want.clone());
        async move { (a_records(&query(&d, "web.berth.", RecordType::A)) == want).then_some(()) }
    })
    .await;
    let r = query(&dns, "WEB.Berth.", RecordType::A);
    assert!(r.authoritative() && r.response_code() == ResponseCode::NoError);
    assert_eq!(a_records(&r), ips, "names are case-insensitive");
    assert!(r.answers().iter().all(|a| a.ttl() == 5));

    let (_, list) = c.get(1, "/v1/instances?app=web").await;
    let first = &list.as_array().unwrap()[0];
    let (id, ip): (&str, Ipv4Addr) = (first["id"].as_str().unwrap(), first["ip"].as_str().unwrap().parse().unwrap());
    let index = id.rsplit('-').next().unwrap();
    assert_eq!(a_records(&query(&dns, &format!("{index}.web.berth."), RecordType::A)), [ip].into());
    assert_eq!(a_records(&query(&dns, &format!("{id}.web.berth."), RecordType::A)), [ip].into());

    let srv = query(&dns, "_web._tcp.berth.", RecordType::SRV);
    let targets: BTreeSet<(u16, String)> = srv
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::SRV(s) => Some((s.port(), s.target().to_ascii())),
            _ => None,
        })
        .collect();
    assert_eq!(targets.len(), 2, "{srv:?}");
    assert!(targets.iter().all(|(p, t)| *p == 8080 && t.ends_with(".web.berth.")), "{targets:?}");
    assert_eq!(srv.additionals().len(), 2, "the targets' A records come along");

    assert_eq!(query(&dns, "nope.berth.", RecordType::A).response_code(), ResponseCode::NXDomain);
    assert_eq!(query(&dns, "99.web.berth.", RecordType::A).response_code(), ResponseCode::NXDomain);
    let aaaa = query(&dns, "web.berth.", RecordType::AAAA);
    assert_eq!((aaaa.response_code(), aaaa.answers().len()), (ResponseCode::NoError, 0), "a name without AAAA");
    assert_eq!(query(&dns, "example.com.", RecordType::A).response_code(), ResponseCode::Refused);

    // Garbage is dropped, and the server still answers afterwards.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.send_to(b"\x00\x01not dns", &dns).unwrap();
    assert_eq!(a_records(&query(&dns, "web.berth.", RecordType::A)), ips);

    // A scale shows within the replica's lag.
    let (s, v) = c.post(3, "/v1/apps/web/scale", json!({"instances": 3})).await;
    assert_eq!(s, 200, "{v}");
    let three = healthy_ips(&c, 3).await;
    let d = dns.clone();
    c.eventually(Duration::from_secs(10), "web.berth lists three", || {
        let (d, want) = (d.clone(), three.clone());
        async move { (a_records(&query(&d, "web.berth.", RecordType::A)) == want).then_some(()) }
    })
    .await;

    // TCP, as a resolver falls back to it.
    let mut m = Message::new();
    m.set_id(7).set_message_type(MessageType::Query).set_op_code(OpCode::Query);
    m.add_query(Query::query(Name::from_ascii("web.berth.").unwrap(), RecordType::A));
    let body = m.to_vec().unwrap();
    let d = dns.clone();
    let reply = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&d).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut framed = (body.len() as u16).to_be_bytes().to_vec();
        framed.extend(body);
        s.write_all(&framed).unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut msg).unwrap();
        Message::from_vec(&msg).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(a_records(&reply).len(), 3);

    // dig, a real resolver client, when installed.
    match Command::new("dig").args(["+short", "-p", &port.to_string(), "@127.0.0.1", "web.berth", "A"]).output() {
        Ok(out) if out.status.success() => {
            let got: BTreeSet<Ipv4Addr> =
                String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
            assert_eq!(got.len(), 3, "dig: {}", String::from_utf8_lossy(&out.stdout));
        }
        _ => {
            assert!(std::env::var("BERTH_REQUIRE_CLIENTS").is_err(), "BERTH_REQUIRE_CLIENTS is set but dig is missing");
            eprintln!("SKIPPED the dig part: dig is not installed (apt install bind9-dnsutils)");
        }
    }
}
