//! DNS for apps, on `--dns-listen` (UDP and TCP): every node answers from its replica
//! (docs/api.md, "DNS").
//!
//! - `APP.berth` A: the IPs of the app's healthy instances (those with a sticky IP).
//! - `INDEX.APP.berth` or `INSTANCE.APP.berth` (`3.web.berth`, `web-3.web.berth`) A:
//!   that instance's IP while it is placed, healthy or not (it is its address).
//! - `_APP._tcp.berth` SRV: one record per healthy instance, its app `port`, target
//!   `INDEX.APP.berth` (with its A record in the additional section).
//!
//! Names are case-insensitive; the TTL is 5 s (placements move). EDNS version 0: a
//! query with an OPT record gets one back and UDP answers up to its size (at most
//! 4096 bytes); without, UDP answers over 512 bytes are truncated. An unknown app or
//! instance is NXDOMAIN, a known name without records of the asked type NOERROR with
//! no answer; names outside `berth.` are REFUSED (this is not a recursive resolver).
//! Answers come from the local replica without a read barrier — a few milliseconds
//! behind the leader at worst, like Consul's DNS with stale reads — so a lookup costs
//! no Raft round. Message encoding is hickory-proto's (the hickory-dns project); the
//! serving loops are here.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

use super::Node;
use crate::state::apps::{App, Instance};
use crate::state::State;

/// The zone berth answers for.
pub const ZONE: &str = "berth.";
const TTL: u32 = 5;
/// Without EDNS a UDP answer must fit in 512 bytes (RFC 1035), else it is truncated
/// and the client retries over TCP.
const UDP_PLAIN: usize = 512;
/// The most a UDP answer carries even when a client's EDNS offers more (the DNS flag
/// day's advice is 1232; 4096 is the common ceiling; beyond ~65 KB `send_to` fails).
const UDP_MAX: usize = 4096;

/// Serves DNS on `addr` (UDP and TCP) until `stop`.
pub async fn serve(node: Arc<Node>, udp: UdpSocket, tcp: TcpListener, stop: CancellationToken) {
    let udp = Arc::new(udp);
    let udp_loop = {
        let (node, stop) = (node.clone(), stop.clone());
        async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, from) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = udp.recv_from(&mut buf) => match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::debug!(error = %e, "dns: udp receive");
                            continue;
                        }
                    },
                };
                let reply = answer_bytes(&node.state.read().state, &buf[..n], true);
                if let Some(reply) = reply {
                    if let Err(e) = udp.send_to(&reply, from).await {
                        tracing::debug!(error = %e, %from, "dns: udp send");
                    }
                }
            }
        }
    };
    let tcp_loop = async move {
        loop {
            let (mut stream, from) = tokio::select! {
                _ = stop.cancelled() => return,
                r = tcp.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "dns: tcp accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let node = node.clone();
            tokio::spawn(async move {
                // Length-prefixed messages (RFC 1035 4.2.2), several per connection.
                loop {
                    let read = async {
                        let len = stream.read_u16().await? as usize;
                        let mut msg = vec![0u8; len];
                        stream.read_exact(&mut msg).await?;
                        Ok::<_, std::io::Error>(msg)
                    };
                    let Ok(Ok(msg)) = tokio::time::timeout(Duration::from_secs(10), read).await else { return };
                    let reply = answer_bytes(&node.state.read().state, &msg, false);
                    let Some(reply) = reply else { return };
                    let mut out = (reply.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&reply);
                    if stream.write_all(&out).await.is_err() {
                        tracing::debug!(%from, "dns: tcp client went away");
                        return;
                    }
                }
            });
        }
    };
    tokio::join!(udp_loop, tcp_loop);
}

/// The wire answer to a wire query; None for what is not a query (dropped, as
/// servers do with garbage).
pub fn answer_bytes(state: &State, query: &[u8], udp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    if request.message_type() != MessageType::Query {
        return None;
    }
    let mut reply = answer(state, &request);
    let mut bytes = reply.to_vec().ok()?;
    let limit =
        request.extensions().as_ref().map_or(UDP_PLAIN, |e| usize::from(e.max_payload()).clamp(UDP_PLAIN, UDP_MAX));
    if udp && bytes.len() > limit {
        reply.take_answers();
        reply.take_additionals();
        reply.set_truncated(true);
        bytes = reply.to_vec().ok()?;
    }
    Some(bytes)
}

/// The answer to one query message.
pub fn answer(state: &State, request: &Message) -> Message {
    let mut reply = Message::new();
    reply
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(false);
    reply.add_queries(request.queries().iter().cloned());
    // EDNS (RFC 6891): a query with an OPT record gets one back — without it a client
    // such as systemd-resolved concludes the server has no EDNS and falls back to
    // 512-byte answers (then TCP for every big one). Only version 0 exists: a later
    // one is answered BADVERS, with no records.
    if let Some(asked) = request.extensions() {
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_MAX as u16).set_version(0);
        reply.set_edns(edns);
        if asked.version() > 0 {
            reply.set_response_code(ResponseCode::BADVERS);
            return reply;
        }
    }
    let query = match (request.op_code(), request.queries()) {
        (OpCode::Query, [q]) => q,
        (OpCode::Query, _) => {
            reply.set_response_code(ResponseCode::FormErr);
            return reply;
        }
        _ => {
            reply.set_response_code(ResponseCode::NotImp);
            return reply;
        }
    };
    let zone = Name::from_ascii(ZONE).expect("a valid zone");
    let name = query.name().to_lowercase();
    if !zone.zone_of(&name) || query.query_class() != DNSClass::IN {
        reply.set_response_code(ResponseCode::Refused);
        return reply;
    }
    reply.set_authoritative(true);
    // The labels below the zone, most specific first: ["3", "web"].
    let labels: Vec<String> = name
        .iter()
        .take(name.num_labels().saturating_sub(zone.num_labels()) as usize)
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    let wants = |t: RecordType| query.query_type() == t || query.query_type() == RecordType::ANY;
    let a = |ip: Ipv4Addr| Record::from_rdata(name.clone(), TTL, RData::A(A(ip)));
    match labels.as_slice() {
        [] => {} // the zone itself: no records of its own
        [app] => match state.apps.apps.get(app) {
            None => {
                reply.set_response_code(ResponseCode::NXDomain);
            }
            Some(app) if wants(RecordType::A) => {
                reply.add_answers(healthy(state, app).filter_map(|i| i.ip).map(a));
            }
            Some(_) => {}
        },
        [service, proto] if service.starts_with('_') && proto == "_tcp" => match state.apps.apps.get(&service[1..]) {
            None => {
                reply.set_response_code(ResponseCode::NXDomain);
            }
            Some(app) if wants(RecordType::SRV) => {
                if let Some(port) = app.spec().serving_port() {
                    for i in healthy(state, app) {
                        let Some(ip) = i.ip else { continue };
                        let Ok(target) = Name::from_ascii(format!("{}.{}.{ZONE}", i.index, app.id)) else {
                            continue;
                        };
                        let srv = SRV::new(0, 1, port, target.clone());
                        reply.add_answer(Record::from_rdata(name.clone(), TTL, RData::SRV(srv)));
                        reply.add_additional(Record::from_rdata(target, TTL, RData::A(A(ip))));
                    }
                }
            }
            Some(_) => {}
        },
        [instance, app] => {
            let id = if instance.chars().all(|c| c.is_ascii_digit()) {
                format!("{app}-{instance}")
            } else {
                instance.clone()
            };
            let found = state.apps.instance(&id).filter(|i| &i.app == app && i.host.is_some());
            match found {
                None => {
                    reply.set_response_code(ResponseCode::NXDomain);
                }
                Some(i) if wants(RecordType::A) => {
                    reply.add_answers(i.ip.map(a));
                }
                Some(_) => {}
            }
        }
        _ => {
            reply.set_response_code(ResponseCode::NXDomain);
        }
    }
    reply
}

/// An app's instances that serve: wanted, placed, running and healthy.
fn healthy<'a>(state: &'a State, app: &'a App) -> impl Iterator<Item = &'a Instance> + 'a {
    let has_check = app.spec().health_check.is_some();
    state.apps.instances_of(&app.id).filter(move |i| i.host.is_some() && i.is_healthy(has_check))
}

/// Binds the DNS sockets (UDP and TCP on the same address).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    Ok((UdpSocket::bind(addr).await?, TcpListener::bind(addr).await?))
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::Query;

    use super::*;
    use crate::scheduler::tests::{process_app, World};

    fn web(instances: u32) -> World {
        let mut w = World::new();
        w.lan();
        w.host(1, "process", 64.0, 65536, &[]);
        w.deploy(&process_app("web", instances, r#","network":{"pool":"lan"},"port":80"#));
        w.settle(3);
        w.run_all();
        w
    }

    fn query(name: &str, kind: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(1).set_message_type(MessageType::Query).set_op_code(OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn a_big_answer_is_truncated_over_udp_unless_edns_or_tcp_has_room() {
        let w = web(60);
        let ask = query("web.berth.", RecordType::A, None);
        let udp = Message::from_vec(&answer_bytes(&w.s, &ask, true).unwrap()).unwrap();
        assert!(udp.truncated() && udp.answers().is_empty(), "60 A records do not fit in 512 bytes");
        let tcp = Message::from_vec(&answer_bytes(&w.s, &ask, false).unwrap()).unwrap();
        assert_eq!((tcp.truncated(), tcp.answers().len()), (false, 60));
        let roomy = query("web.berth.", RecordType::A, Some(4096));
        let edns = Message::from_vec(&answer_bytes(&w.s, &roomy, true).unwrap()).unwrap();
        assert_eq!((edns.truncated(), edns.answers().len()), (false, 60));
        let small = web(3);
        let fits = Message::from_vec(&answer_bytes(&small.s, &ask, true).unwrap()).unwrap();
        assert_eq!((fits.truncated(), fits.answers().len()), (false, 3));
    }

    #[test]
    fn an_edns_query_gets_an_opt_record_back_and_an_unknown_version_badvers() {
        let w = web(60);
        let plain =
            Message::from_vec(&answer_bytes(&w.s, &query("web.berth.", RecordType::A, None), true).unwrap()).unwrap();
        assert!(plain.extensions().is_none(), "no OPT for a query without one");
        let small =
            Message::from_vec(&answer_bytes(&w.s, &query("web.berth.", RecordType::A, Some(600)), true).unwrap())
                .unwrap();
        let opt = small.extensions().as_ref().expect("an OPT record back");
        assert_eq!((opt.version(), opt.max_payload()), (0, UDP_MAX as u16));
        // 60 A records do not fit in the client's 600 bytes: truncated, still with OPT.
        assert!(small.truncated() && small.answers().is_empty() && small.extensions().is_some());
        let mut v1 = Message::from_vec(&query("web.berth.", RecordType::A, Some(4096))).unwrap();
        v1.extensions_mut().as_mut().unwrap().set_version(1);
        let r = Message::from_vec(&answer_bytes(&w.s, &v1.to_vec().unwrap(), true).unwrap()).unwrap();
        // BADVERS is 16, which hickory reads back as its other name, BADSIG.
        assert_eq!(u16::from(r.response_code()), u16::from(ResponseCode::BADVERS));
        assert!(r.answers().is_empty());
        assert_eq!(r.extensions().as_ref().map(Edns::version), Some(0));
    }

    #[test]
    fn what_is_not_a_query_gets_no_answer_and_a_bad_query_a_clear_code() {
        let w = web(1);
        assert!(answer_bytes(&w.s, b"\x00\x01garbage", true).is_none());
        let mut two = Message::from_vec(&query("web.berth.", RecordType::A, None)).unwrap();
        two.add_query(Query::query(Name::from_ascii("web.berth.").unwrap(), RecordType::A));
        let r = Message::from_vec(&answer_bytes(&w.s, &two.to_vec().unwrap(), true).unwrap()).unwrap();
        assert_eq!(r.response_code(), ResponseCode::FormErr);
        let srv =
            Message::from_vec(&answer_bytes(&w.s, &query("_web._tcp.berth.", RecordType::SRV, None), true).unwrap())
                .unwrap();
        assert_eq!(srv.answers().len(), 1);
    }
}
