//! Health checks run by the agent on the host that runs the instance (unlike
//! Marathon's leader-side checks): http, tcp or cmd, with grace, interval, timeout and
//! a number of consecutive failures before the instance counts as unhealthy.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::runtime::{Runtime, Task};
use crate::state::apps::spec::HealthCheck;

/// One check, once. Ok(()) when it passed; Err(why) otherwise.
pub async fn check_once(rt: &Arc<dyn Runtime>, handle: &str, task: &Task, hc: &HealthCheck) -> Result<(), String> {
    let timeout = Duration::from_secs(hc.timeout_s.max(1));
    let addr: IpAddr = rt.check_address(handle, task).await;
    if let Some(http) = &hc.http {
        let sa = SocketAddr::new(addr, http.port);
        let fut = http_get(sa, &http.path);
        return match tokio::time::timeout(timeout, fut).await {
            Err(_) => Err(format!("GET {}{} timed out after {}s", sa, http.path, hc.timeout_s)),
            Ok(Err(e)) => Err(format!("GET {}{}: {e}", sa, http.path)),
            Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
            Ok(Ok(code)) => Err(format!("GET {}{} answered {code}", sa, http.path)),
        };
    }
    if let Some(tcp) = &hc.tcp {
        let sa = SocketAddr::new(addr, tcp.port);
        return match tokio::time::timeout(timeout, TcpStream::connect(sa)).await {
            Err(_) => Err(format!("connect {sa} timed out")),
            Ok(Err(e)) => Err(format!("connect {sa}: {e}")),
            Ok(Ok(_)) => Ok(()),
        };
    }
    if let Some(cmd) = &hc.cmd {
        return match rt.check_cmd(handle, task, cmd, timeout).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("{cmd:?} failed")),
            Err(e) => Err(e.to_string()),
        };
    }
    Ok(())
}

/// A minimal HTTP/1.0 GET: the status code of the answer.
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: berth-health\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = vec![0u8; 512];
    let mut n = 0;
    while n < 12 {
        let r = s.read(&mut buf[n..]).await?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer"))
}
